"""The compact encodings of a prepared sample's files: quantised flow as 16-bit PNG, audio as FLAC.

**Flow** (`encode_flow` / `decode_flow`): dx and dy are rounded to multiples of a
step, ``FLOW_STEP`` = 1/32 pixel, and stored losslessly as one 16-bit greyscale PNG
of ``2H x W`` pixels: the upper half is dx, the lower half dy, each level
``round(v / step) + 32768``. The error bound: every decoded value is within
``step / 2`` = 1/64 pixel of the value encoded (exactly: the division and the
multiplication by a power of two are exact in float32). A flow whose largest
component would not fit (``|v| >= 32767.5 * step``, 1,024 pixels at 1/32) gets a
coarser power-of-two step, so nothing is clipped; the step used is written into the
PNG as a ``tEXt`` chunk (keyword ``FLOW_STEP_KEY``), which image viewers ignore and
`decode_flow` reads. PNG's "up" filter predicts each row from the one above; with
zlib level 6 (`hearflow prepare`, ~8 ms to encode) a 455 x 256 flow takes about 25-40 KB
instead of the 466 KB of float16 ``.npy`` (bench/loader.py) and decodes in under a
millisecond; `recompress_flow` re-encodes the same levels at zlib level 9
(`hearflow pack`: ~9 % smaller, ~57 ms to encode, the same decoding time; bench/loader.py).

The training transforms resize the flow with filters whose weights are non-negative
and sum to one, and scale it by new size / old size (<= 1 for the working sizes), so
the model's input flow is within ``step / 2`` of what the unquantised flow gives too.

**Audio** (`encode_flac` / `decode_flac`): 16-bit PCM as FLAC, lossless: the decoded
samples equal the WAV's, and `decode_flac` converts them to float exactly as
`hearflow.data.prepared.read_wav` does.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import deflate
import numpy as np

from hearflow.errors import HearflowError

FLOW_STEP = 1.0 / 32  # pixels per level; a power of two, so quantisation and its inverse are exact
FLOW_STEP_KEY = b"hearflow-flow-step"
_OFFSET = 32768
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREPARE_ZLIB_LEVEL = 6  # fast enough to run beside the flow computation
PACK_ZLIB_LEVEL = 9  # once per sample, offline: the smallest zlib makes


def flow_step_for(flow: np.ndarray, step: float = FLOW_STEP) -> float:
    """The step `encode_flow` uses: ``step``, doubled until every level fits in 16 bits."""
    largest = float(np.abs(flow).max(initial=0.0))
    while largest / step >= _OFFSET - 0.5:
        step *= 2
    return step


def quantise_flow(flow: np.ndarray, step: float = FLOW_STEP) -> np.ndarray:
    """The flow as `decode_flow(encode_flow(flow))` gives it back (float32 ``H x W x 2``), without the PNG."""
    flow = np.asarray(flow, dtype=np.float32)
    step = np.float32(flow_step_for(flow, step))
    return np.rint(flow / step) * step


def encode_flow(flow: np.ndarray, step: float = FLOW_STEP, zlib_level: int = PREPARE_ZLIB_LEVEL) -> bytes:
    """Float flow ``H x W x 2`` (dx, dy, pixels) -> 16-bit PNG bytes (see the module docstring)."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or not flow.size:
        raise HearflowError(f"a flow must be H x W x 2 (dx, dy), got {flow.shape}")
    if not np.isfinite(flow).all():
        raise HearflowError("the flow holds NaN or infinite values")
    step = flow_step_for(flow, step)
    levels = np.rint(flow / np.float32(step)).astype(np.int32)
    return _encode_levels(np.moveaxis(levels, -1, 0), step, zlib_level)


def recompress_flow(data: bytes, zlib_level: int = PACK_ZLIB_LEVEL) -> bytes:
    """Flow PNG bytes -> the same levels and step re-encoded at ``zlib_level`` (lossless)."""
    levels, step = decode_flow_levels(data)
    return _encode_levels(levels, step, zlib_level)


def _encode_levels(levels: np.ndarray, step: float, zlib_level: int) -> bytes:
    """Integer levels ``2 x H x W`` (dx plane, dy plane) and their step -> flow PNG bytes."""
    image = (levels.reshape(-1, levels.shape[-1]) + np.int32(_OFFSET)).astype(np.uint16)
    options = [cv2.IMWRITE_PNG_COMPRESSION, int(zlib_level), cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, encoded = cv2.imencode(".png", image, options)
    if not ok:
        raise HearflowError("PNG encoding of the flow failed")
    data = encoded.tobytes()
    text = FLOW_STEP_KEY + b"\0" + repr(step).encode("ascii")
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    header_end = len(_PNG_SIGNATURE) + 25  # the IHDR chunk: length, type, 13 bytes, CRC
    return data[:header_end] + chunk + data[header_end:]


def read_flow_step(data: bytes) -> float:
    """The step recorded in a flow PNG; HearflowError when the bytes are not one."""
    return _flow_step(_png_chunks(data))


def _flow_step(chunks: list[tuple[bytes, bytes, bool]]) -> float:
    """The step of the first ``FLOW_STEP_KEY`` text chunk before the image data."""
    for kind, body, _ in chunks:
        if kind == b"IDAT":
            break
        if kind == b"tEXt" and body.startswith(FLOW_STEP_KEY + b"\0"):
            try:
                step = float(body[len(FLOW_STEP_KEY) + 1 :].decode("ascii"))
            except ValueError:
                break
            if step > 0:
                return step
            break
    raise HearflowError(f"a PNG without a valid {FLOW_STEP_KEY.decode()} entry is not a hearflow flow")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(type, body, whether its CRC matches) of each whole chunk of PNG bytes, up to and
    including IEND (a file cut short ends at its last whole chunk); HearflowError without
    the PNG signature."""
    if not data.startswith(_PNG_SIGNATURE):
        raise HearflowError("not a PNG file")
    chunks, position = [], len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 8 + length
        if end + 4 > len(data):
            break
        crc_matches = zlib.crc32(data[position + 4 : end]) == struct.unpack(">I", data[end : end + 4])[0]
        chunks.append((kind, data[position + 8 : end], crc_matches))
        if kind == b"IEND":
            break
        position = end + 4
    return chunks


def decode_flow_levels(data: bytes) -> tuple[np.ndarray, float]:
    """(int16 levels ``2 x H x W`` (dx plane, dy plane), step): flow = levels * step, pixels.

    The PNGs hearflow writes (16-bit greyscale, every row "up"-filtered) are decoded by
    `_decode_up_filtered` (2.2-2.6x faster than OpenCV's libpng: bench/loader.py); any other
    PNG, and any whose chunks do not check out, by OpenCV, which names what is wrong.
    """
    chunks = _png_chunks(data)
    step = _flow_step(chunks)
    image = _decode_up_filtered(chunks)
    if image is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or image.ndim != 2 or image.shape[0] % 2:
        raise HearflowError("the flow PNG is damaged or not 16-bit greyscale of even height")
    levels = (image ^ np.uint16(_OFFSET)).view(np.int16)  # level - 32768, as int16
    return levels.reshape(2, image.shape[0] // 2, image.shape[1]), step


def _decode_up_filtered(chunks: list[tuple[bytes, bytes, bool]]) -> np.ndarray | None:
    """uint16 ``H x W`` pixels of a 16-bit greyscale, non-interlaced PNG (its `_png_chunks`)
    whose rows all use the "up" filter, or all none; None for any other PNG, or one that is
    cut short or whose CRCs, zlib stream or length do not check out.

    libdeflate inflates the image data (`deflate`: ~4x faster than zlib, bench/loader.py),
    and the "up" filter (each byte plus the byte above it, modulo 256) is undone by a
    prefix sum over the rows in log2(H) vectorised steps.
    """
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND" or len(chunks[0][1]) != 13 \
            or not all(crc_matches for _, _, crc_matches in chunks):
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if (depth, colour, compression, filtering, interlace) != (16, 0, 0, 0, 0) or not width or not height:
        return None
    row_bytes = 1 + 2 * width
    try:
        raw = deflate.zlib_decompress(b"".join(body for kind, body, _ in chunks if kind == b"IDAT"),
                                      height * row_bytes)
    except deflate.DeflateError:
        return None
    if len(raw) != height * row_bytes:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, row_bytes)
    if (rows[:, 0] == 2).all():
        pixels = np.array(rows[:, 1:])
        shift = 1
        while shift < height:
            pixels[shift:] += pixels[:-shift]  # numpy reads the overlapping rows before it writes
            shift *= 2
    elif (rows[:, 0] == 0).all():
        pixels = rows[:, 1:]
    else:
        return None
    return pixels.view(">u2").astype(np.uint16)


def decode_flow(data: bytes) -> np.ndarray:
    """Flow PNG bytes -> float32 ``H x W x 2`` (dx, dy) pixels.

    The array is a view of planar storage (``2 x H x W``), so ``flow[..., c]`` is
    contiguous; values are the encoded flow within ``step / 2``.
    """
    levels, step = decode_flow_levels(data)
    planar = levels.astype(np.float32)
    planar *= np.float32(step)
    return planar.transpose(1, 2, 0)


def encode_flac(pcm: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 PCM -> FLAC bytes (lossless, FLAC's strongest compression level)."""
    import soundfile

    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise HearflowError(f"FLAC audio is stored from mono int16 PCM, got {pcm.dtype} {pcm.shape}")
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, int(sample_rate), format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buffer.getvalue()


def decode_flac_pcm(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (int16 PCM ``n x channels``, sample rate)."""
    import soundfile

    try:
        pcm, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (RuntimeError, ValueError, soundfile.LibsndfileError) as error:
        raise HearflowError(f"not readable FLAC audio ({error})") from None
    return pcm, int(rate)


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 in [-1, 1], sample rate), the conversion of `read_wav`."""
    pcm, rate = decode_flac_pcm(data)
    audio = pcm.astype(np.float32) / 32768.0
    if audio.shape[1] > 1:
        return audio.mean(axis=1), rate
    return audio[:, 0], rate
