"""hearflow.data.codecs: the quantised flow PNG (its error bound) and FLAC audio (lossless)."""

from __future__ import annotations

import io
import shutil
import zlib

import cv2
import numpy as np
import pytest
from fixtures_train import small_config, synth_set  # noqa: F401
from PIL import Image

from hearflow.data.codecs import (
    FLOW_STEP,
    decode_flac,
    decode_flow,
    decode_flow_levels,
    encode_flac,
    encode_flow,
    read_flow_step,
    recompress_flow,
)
from hearflow.data.prepared import PreparedFolder, encode_jpeg, read_wav
from hearflow.data.transforms import image_flow_tensors
from hearflow.errors import HearflowError
from hearflow.prepare import prepare


def _random_flow(rng, height=96, width=160, scale=6.0):
    """Smooth motion plus noise, a few large vectors, and values exactly half-way between levels."""
    flow = rng.normal(0, scale, (height, width, 2)).astype(np.float32)
    flow = cv2.GaussianBlur(flow, (0, 0), 3) + rng.normal(0, 0.05, (height, width, 2)).astype(np.float32)
    flow[0, :8, 0] = [1023.9, -1023.9, 500.3, -0.01, 0.0, FLOW_STEP / 2, -FLOW_STEP / 2, 3 * FLOW_STEP / 2]
    return flow.astype(np.float32)


def test_flow_round_trip_is_within_half_a_step():
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(5):
        flow = _random_flow(rng)
        data = encode_flow(flow)
        decoded = decode_flow(data)
        assert decoded.dtype == np.float32 and decoded.shape == flow.shape
        assert read_flow_step(data) == FLOW_STEP == 1 / 32
        errors.append(np.abs(decoded.astype(np.float64) - flow))
    errors = np.concatenate([e.ravel() for e in errors])
    assert errors.max() <= FLOW_STEP / 2  # the stated bound, 1/64 pixel
    # Rounding to the nearest level: the mean error of a continuous field is a quarter step.
    assert errors.mean() == pytest.approx(FLOW_STEP / 4, rel=0.05)
    # Values on the grid are exact.
    grid = (rng.integers(-30000, 30000, (20, 30, 2)) * FLOW_STEP).astype(np.float32)
    np.testing.assert_array_equal(decode_flow(encode_flow(grid)), grid)


def test_a_flow_too_large_for_16_bits_gets_a_coarser_recorded_step():
    flow = np.zeros((8, 8, 2), np.float32)
    flow[3, 4] = [5000.3, -2047.0]
    data = encode_flow(flow)
    step = read_flow_step(data)
    assert step == 8 * FLOW_STEP  # 5000.3 / (1/4) < 32767.5 <= 5000.3 / (1/8)
    assert np.abs(decode_flow(data) - flow).max() <= step / 2


def test_the_flow_png_is_an_ordinary_16_bit_image():
    flow = _random_flow(np.random.default_rng(1), 40, 50)
    data = encode_flow(flow)
    for image in (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED),
                  np.asarray(Image.open(io.BytesIO(data)))):
        assert image.shape == (80, 50) and image.dtype in (np.uint16, np.int32)
        top = (image[:40].astype(np.float64) - 32768) * FLOW_STEP
        np.testing.assert_allclose(top, flow[..., 0], atol=FLOW_STEP / 2)
    levels, step = decode_flow_levels(data)
    assert levels.dtype == np.int16 and levels.shape == (2, 40, 50) and step == FLOW_STEP


def test_recompressing_a_flow_keeps_its_levels_and_step_and_saves_bytes():
    rng = np.random.default_rng(4)
    for flow in (_random_flow(rng, 128, 227), np.full((6, 9, 2), 3000.0, np.float32)):
        fast = encode_flow(flow)
        small = recompress_flow(fast)
        levels, step = decode_flow_levels(fast)
        again, again_step = decode_flow_levels(small)
        np.testing.assert_array_equal(again, levels)
        assert again_step == step == read_flow_step(small)
        np.testing.assert_array_equal(decode_flow(small), decode_flow(fast))
        assert len(small) <= len(fast)
    # Smooth motion (what a video's flow mostly is) compresses a few per cent better at level 9.
    smooth = cv2.GaussianBlur(rng.normal(0, 6.0, (256, 455, 2)).astype(np.float32), (0, 0), 8)
    assert len(recompress_flow(encode_flow(smooth))) < 0.97 * len(encode_flow(smooth))


def _png_of(pixels: np.ndarray, png_filter: int) -> bytes:
    ok, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_FILTER, png_filter])
    assert ok
    return data.tobytes()


def test_the_fast_png_decoder_gives_opencvs_pixels_or_leaves_the_png_to_opencv():
    """`_decode_up_filtered` (libdeflate + a prefix sum over rows) against libpng on random
    16-bit images of many shapes (1 row, odd heights, several IDAT chunks); PNGs it does not
    handle (other filters, 8-bit, RGB, a damaged CRC or stream) are None, so OpenCV decodes them."""
    from hearflow.data.codecs import _decode_up_filtered as decode_chunks
    from hearflow.data.codecs import _png_chunks

    def _decode_up_filtered(data):
        return decode_chunks(_png_chunks(data))

    rng = np.random.default_rng(6)
    for height, width in [(1, 1), (1, 7), (2, 3), (37, 61), (512, 455), (300, 1000)]:
        smooth = cv2.GaussianBlur(rng.normal(32768, 3000, (height, width)), (0, 0), 2) if height > 1 else \
            rng.normal(32768, 3000, (height, width))
        for pixels in (np.clip(smooth, 0, 65535).astype(np.uint16), rng.integers(0, 65536, (height, width), np.uint16)):
            for png_filter in (cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_FILTER_NONE):
                np.testing.assert_array_equal(_decode_up_filtered(_png_of(pixels, png_filter)), pixels)
    pixels = rng.integers(0, 65536, (40, 50), np.uint16)
    others = [_png_of(pixels, cv2.IMWRITE_PNG_FILTER_PAETH), _png_of(pixels, cv2.IMWRITE_PNG_FILTER_SUB),
              _png_of((pixels >> 8).astype(np.uint8), cv2.IMWRITE_PNG_FILTER_UP),
              _png_of(np.dstack([pixels] * 3), cv2.IMWRITE_PNG_FILTER_UP)]
    up = _png_of(pixels, cv2.IMWRITE_PNG_FILTER_UP)
    idat = up.index(b"IDAT")
    damaged_crc = up[: idat + 20] + bytes([up[idat + 20] ^ 1]) + up[idat + 21 :]
    assert all(_decode_up_filtered(data) is None for data in others + [damaged_crc, up[:-20], up[:40]])
    for data in others[:2]:  # filters it leaves to OpenCV still decode, through OpenCV
        text = b"hearflow-flow-step\x000.03125"
        chunk = len(text).to_bytes(4, "big") + b"tEXt" + text + zlib.crc32(b"tEXt" + text).to_bytes(4, "big")
        levels, step = decode_flow_levels(data[:33] + chunk + data[33:])
        np.testing.assert_array_equal(levels.reshape(40, 50), (pixels ^ 32768).view(np.int16))
    with pytest.raises(HearflowError, match="damaged"):
        decode_flow(encode_flow(np.ones((8, 8, 2), np.float32))[:-30])


def test_the_optimised_jpeg_gives_the_pixels_of_the_plain_one_in_fewer_bytes():
    """Huffman optimisation changes the entropy coding only: OpenCV's and Pillow's decoders
    give the plain encoding's pixels, so folders prepared before it read the same."""
    rng = np.random.default_rng(5)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (256, 455, 3), dtype=np.uint8), (0, 0), 1.5)
    frame = np.clip(frame.astype(np.int16) + rng.integers(-12, 13, frame.shape), 0, 255).astype(np.uint8)
    ok, plain = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    optimised = encode_jpeg(frame)
    assert len(optimised) < 0.97 * len(plain)
    for decode in (lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                   lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))):
        np.testing.assert_array_equal(decode(optimised), decode(plain.tobytes()))


def test_bad_flows_and_bad_files_are_clear_errors():
    with pytest.raises(HearflowError, match="NaN"):
        encode_flow(np.full((4, 4, 2), np.nan, np.float32))
    with pytest.raises(HearflowError, match="H x W x 2"):
        encode_flow(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(HearflowError, match="not a PNG"):
        decode_flow(b"\x93NUMPY...")
    ok, plain = cv2.imencode(".png", np.zeros((4, 4), np.uint16))
    with pytest.raises(HearflowError, match="hearflow-flow-step"):
        decode_flow(plain.tobytes())


def test_the_models_input_flow_is_within_the_bound():
    """Resizing averages with non-negative weights summing to one and scales by <= 1: the
    quantisation error of the input the model sees stays within half a step."""
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (256, 455, 3), dtype=np.uint8)
    flow = _random_flow(rng, 256, 455)
    decoded = decode_flow(encode_flow(flow))
    data = small_config(**{"data.image_size": 224, "data.train_resize": 246}).data
    for train in (False, True):
        exact = image_flow_tensors(frame, flow, data, train, np.random.default_rng(5))[1]
        quantised = image_flow_tensors(frame, decoded, data, train, np.random.default_rng(5))[1]
        assert float((exact - quantised).abs().max()) <= FLOW_STEP / 2 + 1e-5


def test_flac_is_lossless_and_reads_like_the_wav(tmp_path):
    rng = np.random.default_rng(3)
    pcm = np.clip(rng.normal(0, 8000, 48000), -32768, 32767).astype(np.int16)
    pcm[:4] = [-32768, 32767, 0, -1]
    data = encode_flac(pcm, 16000)
    audio, rate = decode_flac(data)
    (tmp_path / "a.wav").write_bytes(_wav_of(pcm))
    reference, wav_rate = read_wav(tmp_path / "a.wav")
    assert rate == wav_rate == 16000 and audio.dtype == np.float32
    np.testing.assert_array_equal(audio * 32768, pcm)
    np.testing.assert_array_equal(audio, reference)
    assert len(data) < 2 * len(pcm)
    with pytest.raises(HearflowError, match="FLAC"):
        decode_flac(b"not flac")
    with pytest.raises(HearflowError, match="int16"):
        encode_flac(pcm.astype(np.float32), 16000)


def _wav_of(pcm):
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def test_folders_of_earlier_versions_with_npy_flow_are_read_and_resumed(synth_set, tmp_path):
    """A folder whose flows are float16 .npy (before the PNG) reads as it is, and a rerun of
    prepare into it keeps its finished samples."""
    legacy = synth_set.copy_prepared(tmp_path / "legacy")
    current = PreparedFolder(synth_set.prepared)
    for sample_id in current.ids:
        png = legacy / "flow" / f"{sample_id}.png"
        np.save(png.with_suffix(".npy"), current.read(sample_id).flow.astype(np.float16))
        png.unlink()
    folder = PreparedFolder(legacy)
    sample_id = folder.ids[3]
    assert folder.paths(sample_id)["flow"].suffix == ".npy" and not folder.missing_files(sample_id)
    np.testing.assert_allclose(folder.read(sample_id).flow, current.read(sample_id).flow, rtol=1e-3, atol=1e-4)
    summary = prepare(synth_set.root / "videos", legacy, small_config().data, progress=False)
    assert summary.already_done == len(current.ids) and summary.prepared == 0
    assert not list((legacy / "flow").glob("*.png"))
    shutil.rmtree(legacy)
