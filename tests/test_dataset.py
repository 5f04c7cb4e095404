"""PreparedDataset: the one preprocessing path, reproducible augmentation, missing files, layouts."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import scipy.signal
import torch
from fixtures_train import small_config, synth_set  # noqa: F401
from torch.utils.data import DataLoader

from hearflow.config import preset_config
from hearflow.data.dataset import PreparedDataset
from hearflow.data.transforms import fit_audio
from hearflow.data.prepared import PreparedFolder, read_wav
from hearflow.data.transforms import image_flow_tensors, spectrogram
from hearflow.errors import HearflowError
from hearflow.media.audio import resample

def test_test_items_are_the_transforms_of_the_stored_sample(synth_set):
    config = small_config()
    dataset = PreparedDataset(synth_set.prepared, config, train=False)
    assert dataset.ids == synth_set.ids() and len(dataset) == 16
    item = dataset[3]
    sample = PreparedFolder(synth_set.prepared).read(item["id"])
    image, flow = image_flow_tensors(sample.frame, sample.flow, config.data, train=False)
    assert item["id"] == dataset.ids[3]
    assert item["image"].shape == (3, 64, 64) and item["flow"].shape == (2, 64, 64)
    assert torch.equal(item["image"], image) and torch.equal(item["flow"], flow)
    # The spectrogram against scipy directly on the stored WAV (3 s at 16 kHz).
    audio, rate = read_wav(synth_set.prepared / "audio" / f"{item['id']}.wav")
    assert rate == 16000 and len(audio) == 48000
    _, _, power = scipy.signal.spectrogram(audio.astype(np.float64), 16000, nperseg=512, noverlap=274)
    expected = (np.log(power + 1e-7) - 0.0) / 12.0
    assert item["spectrogram"].dtype == torch.float32 and item["spectrogram"].shape == (1, 257, 200)
    np.testing.assert_allclose(item["spectrogram"][0].numpy(), expected, rtol=0, atol=1e-5)
    # The test transform has no randomness.
    assert torch.equal(dataset[3]["image"], item["image"])


def test_train_augmentation_depends_on_seed_epoch_and_index_only(synth_set):
    dataset = PreparedDataset(synth_set.prepared, small_config(), train=True)
    dataset.set_epoch(1)
    first = [dataset[i] for i in range(8)]
    again = [dataset[i] for i in range(8)]
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["flow"], b["flow"]) for a, b in zip(first, again))
    dataset.set_epoch(2)
    other = [dataset[i] for i in range(8)]
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other))
    # The loader's worker processes draw the same augmentations as the main process.
    dataset.set_epoch(1)
    batch = next(iter(DataLoader(dataset, batch_size=8, num_workers=2)))
    assert batch["id"] == dataset.ids[:8]
    assert torch.equal(batch["image"], torch.stack([item["image"] for item in first]))
    assert torch.equal(batch["flow"], torch.stack([item["flow"] for item in first]))


def test_sample_order_does_not_depend_on_the_manifest_row_order(synth_set, tmp_path):
    """Workers finish in any order, so manifest rows come in any order; the dataset (and
    so the seeded shuffling and augmentation of training) must not follow it."""
    copy = tmp_path / "prepared"
    shutil.copytree(synth_set.prepared, copy)
    lines = (copy / "manifest.csv").read_text().splitlines(keepends=True)
    (copy / "manifest.csv").write_text(lines[0] + "".join(reversed(lines[1:])))
    original = PreparedDataset(synth_set.prepared, small_config(), train=True)
    shuffled = PreparedDataset(copy, small_config(), train=True)
    assert shuffled.ids == original.ids == sorted(original.ids)
    assert torch.equal(shuffled[5]["image"], original[5]["image"])


def test_train_crops_and_flips_image_and_flow_together(synth_set):
    config = small_config()
    dataset = PreparedDataset(synth_set.prepared, config, train=True)
    sample = PreparedFolder(synth_set.prepared).read(dataset.ids[5])
    rng = np.random.default_rng([config.train.seed, 0, 5])
    image, flow = image_flow_tensors(sample.frame, sample.flow, config.data, train=True, rng=rng)
    item = dataset[5]
    assert torch.equal(item["image"], image) and torch.equal(item["flow"], flow)


def test_audio_is_resampled_to_the_config_rate(synth_set):
    config = small_config(**{"data.sample_rate": 8000})
    dataset = PreparedDataset(synth_set.prepared, config, train=False)
    sample = PreparedFolder(synth_set.prepared).read(dataset.ids[0])
    assert sample.sample_rate == 16000
    expected = spectrogram(resample(sample.audio, 16000, 8000), config.data)
    item = dataset[0]
    assert item["spectrogram"].shape == expected.shape == (1, 257, 99)
    np.testing.assert_array_equal(item["spectrogram"].numpy(), expected)


def test_fit_audio_crops_the_centre_and_tiles_short_clips():
    data = preset_config("htf").data
    data.sample_rate, data.seconds = 4, 1.75  # a window of 7 samples
    np.testing.assert_array_equal(fit_audio(np.array([1, 2, 3], np.float32), 4, data), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fit_audio(np.arange(11, dtype=np.float32), 4, data), [2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(fit_audio(np.zeros(0, np.float32), 4, data), np.zeros(7))


def test_missing_files_are_an_error_or_skipped_and_listed(synth_set, tmp_path):
    folder = synth_set.copy_prepared(tmp_path / "prepared")
    ids = synth_set.ids()
    (folder / "flow" / f"{ids[2]}.png").unlink()
    with pytest.raises(HearflowError, match=rf"{ids[2]}.*missing .*flow.*{ids[2]}\.png.*--skip-missing"):
        PreparedDataset(folder, small_config(), train=True)
    dataset = PreparedDataset(folder, small_config(), train=True, skip_missing=True)
    assert dataset.ids == ids[:2] + ids[3:]
    assert [sample_id for sample_id, _ in dataset.skipped] == [ids[2]]
    with pytest.raises(HearflowError, match="not in the folder's manifest"):
        PreparedDataset(folder, small_config(), train=False, ids=[ids[0], "no-such-clip"])


def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def test_damaged_files_are_found_named_and_follow_skip_missing(synth_set, tmp_path):
    """Truncated or empty files used to decode silently (a libjpeg line at most): each is now
    named with its sample, up front, and --skip-missing leaves it out with the reason."""
    folder = synth_set.copy_prepared(tmp_path / "prepared")
    ids = synth_set.ids()
    jpeg, wav, png = (folder / "frames" / f"{ids[1]}.jpg", folder / "audio" / f"{ids[3]}.wav",
                      folder / "flow" / f"{ids[5]}.png")
    _cut(jpeg, jpeg.stat().st_size // 2)
    _cut(wav, wav.stat().st_size - 1000)
    _cut(png, png.stat().st_size - 10)
    (folder / "frames" / f"{ids[7]}.jpg").write_bytes(b"")
    expected = {
        ids[1]: f"{jpeg} is truncated (no JPEG end-of-image marker)",
        ids[3]: f"{wav} is truncated",
        ids[5]: f"{png} is truncated (no PNG end chunk)",
        ids[7]: f"{folder / 'frames' / ids[7]}.jpg is empty (0 bytes)",
    }
    with pytest.raises(HearflowError) as error:
        PreparedDataset(folder, small_config(), train=False)
    assert f"sample {ids[1]!r}" in str(error.value) and expected[ids[1]] in str(error.value)
    assert "--skip-missing" in str(error.value)
    dataset = PreparedDataset(folder, small_config(), train=False, skip_missing=True)
    assert dataset.ids == [sample_id for sample_id in ids if sample_id not in expected]
    assert {sample_id: reason for sample_id, reason in dataset.skipped}.keys() == expected.keys()
    for sample_id, reason in dataset.skipped:
        assert reason.startswith(expected[sample_id]), reason
    # Reading decodes strictly too (a file damaged after the dataset was made).
    prepared = PreparedFolder(folder)
    for sample_id, message in ((ids[1], "no JPEG end-of-image marker"), (ids[3], "not a readable WAV file")):
        with pytest.raises(HearflowError, match=rf"sample '{sample_id}'.*{message}"):
            prepared.read(sample_id)
    with pytest.raises(HearflowError, match=r"not a readable WAV file.*"):
        read_wav(wav)


def test_a_rerun_of_prepare_redoes_samples_whose_files_are_damaged(synth_set, tmp_path):
    from hearflow.prepare import prepare
    from hearflow.synthetic.presets import demo_config

    folder = synth_set.copy_prepared(tmp_path / "prepared")
    ids = synth_set.ids()
    frame = folder / "frames" / f"{ids[0]}.jpg"
    whole = frame.read_bytes()
    _cut(frame, len(whole) // 3)
    summary = prepare(synth_set.root / "videos", folder, demo_config("cpu-small").data, progress=False)
    assert (summary.prepared, summary.already_done) == (1, len(ids) - 1)
    assert frame.read_bytes() == whole


def _released_copy(synth_set, destination):
    """The same samples in the released layout: 8-bit JPEG flow clipped to [0, 255]."""
    for sub in ("frames", "flow/flow_x", "flow/flow_y", "audio"):
        (destination / sub).mkdir(parents=True)
    folder = PreparedFolder(synth_set.prepared)
    for sample_id in folder.ids:
        shutil.copy(synth_set.prepared / "frames" / f"{sample_id}.jpg", destination / "frames")
        shutil.copy(synth_set.prepared / "audio" / f"{sample_id}.wav", destination / "audio")
        flow = folder.read(sample_id).flow
        for channel, name in enumerate(("flow_x", "flow_y")):
            cv2.imwrite(str(destination / "flow" / name / f"{sample_id}.jpg"), np.clip(flow[..., channel], 0, 255))
    return destination


def test_released_layout_needs_the_official_flow_encoding(synth_set, tmp_path):
    folder = _released_copy(synth_set, tmp_path / "released")
    with pytest.raises(HearflowError, match="official"):
        PreparedDataset(folder, small_config(), train=False)
    config = small_config(**{"data.flow_encoding": "official"})
    dataset = PreparedDataset(folder, config, train=True)
    assert PreparedFolder(folder).layout == "released"
    assert sorted(dataset.ids) == sorted(synth_set.ids())
    item = dataset[0]
    assert item["flow"].shape == (2, 64, 64)
    assert float(item["flow"].min()) >= 0.0 and float(item["flow"].max()) <= 1.0
