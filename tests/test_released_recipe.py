"""The released recipe's differences, each a named option with a known answer (issue 15).

Presets give a reason for each field they change; old checkpoints keep their meaning;
the Flickr test audio window (key frame or the track's middle, the release's slicing);
the key-frame overrides; unshuffled training and the first of tied epochs; the audio
pooling of Eq. 2; the max-pool flow encoder and leftward motion; the AP confidences;
a folder's recipe against a checkpoint's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures_train import small_config, synth_set  # noqa: F401
from hearflow.cli import main
from hearflow.config import ADDED_FIELDS, PRESETS, Config, DataConfig, field_names, preset_config, preset_differences
from hearflow.data.lists import read_keyframe_files, read_keyframes
from hearflow.data.loading import TrainingData, released_order
from hearflow.data.prepared import PreparedFolder, read_wav, recipe_differences
from hearflow.data.transforms import fit_audio
from hearflow.errors import HearflowError
from hearflow.media.audio import middle_window
from hearflow.metrics import CONFIDENCES, bicubic_aligned, confidence, map_max, peak, slavc_confidence
from hearflow.model import build_model
from hearflow.model.encoders import AudioEncoder, max_pool_flow
from hearflow.model.resnet import ResNetTrunk
from hearflow.scoring import Predictions
from hearflow.train import _is_best
from hearflow.train.run_folder import RunState
from media_fixtures import write_video

# ---------------------------------------------------------------- presets and their reasons


def test_every_preset_gives_a_reason_for_every_field_it_changes():
    paper = {f"{section}.{key}": value for section, fields in preset_config("htf").to_dict().items()
             if isinstance(fields, dict) for key, value in fields.items()}
    for name, preset in PRESETS.items():
        assert set(preset.why) == set(preset.fields), name  # no field without a reason, no stale reason
        differing = preset_differences(name)
        assert {key for key, *_ in differing} == {key for key, value in preset.fields.items() if paper[key] != value}
        for key, value, paper_value, why in differing:
            assert why.strip() and value != paper_value == paper[key], (name, key)
    assert preset_differences("htf") == []


def test_presets_name_prints_each_difference_with_its_reason(capsys):
    assert main(["presets", "htf-released"]) == 0
    out = capsys.readouterr().out
    for key, value, paper, why in preset_differences("htf-released"):
        assert f"#   {key}: {value!r} (htf: {paper!r}) -- {why}" in out
    assert "data.flow_size: 0 (htf: 256)" in out and "train.shuffle: False (htf: True)" in out


def test_released_presets_reproduce_the_release_and_htf_the_text():
    for name in ("htf-released", "htf-released-maxpool"):
        config = preset_config(name)
        assert (config.data.audio_centre, config.data.flow_size, config.train.shuffle, config.train.best_ties,
                config.model.audio_pool, config.model.flow_pool) == ("clip-middle", 0, False, "first", "max",
                                                                     "channel-max")
    htf = preset_config("htf")
    assert (htf.data.audio_centre, htf.train.shuffle, htf.train.best_ties, htf.model.audio_pool) == (
        "key-frame", True, "auc", "avg")
    assert preset_config("htf-maxpool").model.flow_pool == "magnitude"
    original = preset_config("lvs-original")
    assert (original.model.map_stride, original.data.seconds, original.model.prior) == (16, 20.0, "none")
    model = build_model("lvs-original", pretrained=False, width=8)
    similarity = model(torch.randn(1, 3, 224, 224), torch.zeros(1, 2, 224, 224), torch.randn(1, 1, 257, 40)).similarity
    assert similarity.shape == (1, 14, 14)


def test_an_old_whole_config_keeps_its_old_meaning_and_a_partial_file_takes_the_preset():
    old = preset_config("htf").to_dict()
    for key in ("model.audio_pool", "model.flow_pool", "data.audio_centre", "train.shuffle", "train.best_ties"):
        section, name = key.split(".")
        del old[section][name]
    config = Config.from_dict(old)  # as a checkpoint written before these fields existed
    assert (config.model.audio_pool, config.model.flow_pool, config.data.audio_centre, config.train.shuffle,
            config.train.best_ties) == ("max", "channel-max", "key-frame", True, "auc")
    partial = Config.from_dict({"preset": "htf", "train": {"lr": 3e-4}})  # a user's file: the preset's values
    assert partial.model.audio_pool == "avg" and partial.train.lr == 3e-4
    assert set(ADDED_FIELDS) <= set(field_names())
    with pytest.raises(HearflowError, match="model.audio_pool is 'mean'"):
        preset_config("htf", **{"model.audio_pool": "mean"})


# ---------------------------------------------------------------- the audio window


def test_the_release_cuts_around_the_middle_of_the_tracks_whole_seconds():
    rate = 100
    track = np.arange(1090, dtype=np.float32)  # 10.9 s: whole seconds 10, middle 5 s, cut 3.5 s .. 6.5 s
    np.testing.assert_array_equal(middle_window(track, rate, 3.0), np.arange(350, 650))
    assert (len(track) - 300) // 2 == 395  # the exact centre: 0.45 s later
    config = DataConfig(sample_rate=rate, seconds=3.0)
    np.testing.assert_array_equal(fit_audio(track, rate, config), np.arange(395, 695))
    config.audio_centre = "clip-middle"
    np.testing.assert_array_equal(fit_audio(track, rate, config), np.arange(350, 650))
    np.testing.assert_array_equal(middle_window(np.arange(1000.0), rate, 3.0), np.arange(350, 650))  # 10.0 s
    short = np.arange(250, dtype=np.float32)  # 2.5 s: whole seconds 2, the slice [-50:250] is the last 0.5 s
    np.testing.assert_array_equal(middle_window(short, rate, 3.0), np.tile(np.arange(200, 250), 6))


def _two_clicks_video(path, fps: int = 10, seconds: int = 8, rate: int = 16000):
    """A clip with a click at 1.0 s (frame 11, 1-based) and another at the track's middle, 4.0 s."""
    audio = (0.001 * np.random.default_rng(0).standard_normal((1, seconds * rate))).astype(np.float32)
    for at in (1.0, 4.0):
        audio[:, int(at * rate) : int(at * rate) + 8] = 0.9
    return write_video(path, fps * seconds, fps, (400, 300), audio=audio, sample_rate=rate)


@pytest.mark.parametrize("preset, heard_at_s", [("htf", 1.0), ("htf-released", 1.5)])
def test_paper_presets_hear_the_key_frame_and_released_presets_the_tracks_middle(tmp_path, preset, heard_at_s):
    (tmp_path / "videos").mkdir()
    _two_clicks_video(tmp_path / "videos" / "4242.mp4")
    (tmp_path / "keyframes.csv").write_text("flickr_id,frame_indices\n4242,11\n")
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "videos"), str(out), "--keyframes", str(tmp_path / "keyframes.csv"),
                 "--preset", preset, "--quiet"]) == 0
    folder = PreparedFolder(out)
    audio, rate = read_wav(folder.paths("4242")["audio"])
    # key frame at 1.0 s: the window [0, 3) s holds only the first click, at 1.0 s; the middle
    # of the 8 s track: the window [2.5, 5.5) s holds only the second, 1.5 s into it
    loud = np.flatnonzero(np.abs(audio) > 0.3)
    assert len(loud) and abs(loud[0] / rate - heard_at_s) < 0.01 and loud[-1] / rate - loud[0] / rate < 0.01
    assert folder.recipe["audio_centre"] == preset_config(preset).data.audio_centre
    frame = folder.read("4242").frame
    assert frame.shape[:2] == ((300, 400) if preset == "htf-released" else (256, 341))  # flow_size 0: as recorded


# ---------------------------------------------------------------- key frames


def test_later_keyframe_files_override_earlier_ones_per_id(tmp_path):
    (tmp_path / "a.csv").write_text("flickr_id,frame_indices\n1,10 11\n2,20\n")
    (tmp_path / "b.csv").write_text("flickr_id,frame_indices\n2,7\n3,30\n")
    assert read_keyframe_files([tmp_path / "a.csv", tmp_path / "b.csv"]) == {"1": 10, "2": 7, "3": 30}
    assert read_keyframe_files(tmp_path / "a.csv") == {"1": 10, "2": 20}


def test_the_releases_three_overrides_change_three_flickr_key_frames(reference_data, tmp_path):
    listed = reference_data / "flickr_test_keyframes.csv"
    overrides = tmp_path / "released-overrides.csv"
    overrides.write_text("flickr_id,frame_indices\n5344317532,74\n10624261424,514\n12158276143,375\n")
    before, after = read_keyframes(listed), read_keyframe_files([listed, overrides])
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert changed == {"5344317532": (80, 74), "10624261424": (504, 514), "12158276143": (374, 375)}


# ---------------------------------------------------------------- training order and the best epoch


def test_unshuffled_training_reads_the_releases_order_every_epoch(synth_set):  # noqa: F811
    assert released_order(["b", "ab", "ab-c"]) == ["ab-c", "ab", "b"]  # sorted "ID.jpg": '-' < '.'
    fixed = TrainingData(synth_set.prepared, small_config(**{"train.shuffle": False}), None, False)
    assert fixed.dataset.ids == released_order(synth_set.ids())
    orders = []
    for epoch in (1, 2):
        fixed.sampler.set_epoch(epoch)
        orders.append(list(fixed.sampler))
    assert orders[0] == orders[1] == list(range(len(fixed.dataset)))
    shuffled = TrainingData(synth_set.prepared, small_config(), None, False)
    drawn = []
    for epoch in (1, 2):
        shuffled.sampler.set_epoch(epoch)
        drawn.append(list(shuffled.sampler))
    assert drawn[0] != drawn[1] and sorted(drawn[0]) == list(range(len(shuffled.dataset)))


@pytest.mark.parametrize("ties, best_epoch", [("auc", 2), ("first", 1)])
def test_among_epochs_tied_on_ciou_the_rule_picks_the_best(ties, best_epoch):
    state = RunState(best={"metric": "val_ciou_at_0_5", "score": None, "epoch": 0})
    rows = [{"epoch": 1, "val_ciou_at_0_5": 0.5, "val_auc": 0.30}, {"epoch": 2, "val_ciou_at_0_5": 0.5, "val_auc": 0.40},
            {"epoch": 3, "val_ciou_at_0_5": 0.4, "val_auc": 0.90}]
    flags = [_is_best(state, row, ties) for row in rows]
    assert state.best["epoch"] == best_epoch and flags == [True, ties == "auc", False]


# ---------------------------------------------------------------- the model's pooling


def test_audio_pool_avg_is_eq_2s_global_average_and_max_the_releases():
    torch.manual_seed(0)
    spectrogram = torch.randn(2, 1, 64, 40)
    for pool, reduce in (("avg", lambda x: x.mean(dim=2)), ("max", lambda x: x.max(dim=2).values)):
        encoder = AudioEncoder(16, pool).eval()
        expected = F.normalize(reduce(ResNetTrunk.forward(encoder, spectrogram).flatten(2)), dim=1)
        assert torch.allclose(encoder(spectrogram), expected, atol=1e-6)
    assert build_model("htf", pretrained=False, width=8).audnet.pool == "avg"
    assert build_model("htf-released", pretrained=False, width=8).audnet.pool == "max"


def test_leftward_motion_survives_the_magnitude_max_pool_and_not_the_released_one():
    flow = torch.zeros(1, 2, 14, 14)
    flow[0, 0, 3, 5] = -5.0  # one pixel moving left in cell (1, 2) of the 7 x 7 map
    flow[0, 1, 12, 12] = -3.0  # one moving up in cell (6, 6)
    released = max_pool_flow(flow, (7, 7), "channel-max")
    assert released.abs().max() == 0  # every cell's largest dx and dy is a still pixel's 0
    pooled = max_pool_flow(flow, (7, 7), "magnitude")
    assert pooled[0, :, 1, 2].tolist() == [-5.0, 0.0] and pooled[0, :, 6, 6].tolist() == [0.0, -3.0]
    assert torch.count_nonzero(pooled) == 2


def test_magnitude_pool_equals_a_cell_by_cell_loop():
    flow = torch.randn(2, 2, 14, 21)
    pooled = max_pool_flow(flow, (7, 7), "magnitude")
    for b in range(2):
        for i in range(7):
            for j in range(7):
                rows, cols = slice(i * 2, i * 2 + 2), slice(j * 3, j * 3 + 3)
                cell = flow[b, :, rows, cols].reshape(2, -1)
                assert torch.equal(pooled[b, :, i, j], cell[:, cell.pow(2).sum(0).argmax()])


# ---------------------------------------------------------------- confidences


def test_confidences_equal_slow_references():
    maps = np.random.default_rng(1).uniform(-1, 1, (4, 7, 7)).astype(np.float32)
    upsampled = F.interpolate(torch.from_numpy(maps)[:, None].double(), size=(224, 224), mode="bicubic",
                              align_corners=True)[:, 0].numpy()
    np.testing.assert_allclose(bicubic_aligned(maps, 224), upsampled, atol=1e-12)
    for row in range(4):
        scaled = np.sort(((upsampled[row] + 1) / 2).ravel())
        assert slavc_confidence(maps)[row] == pytest.approx(scaled[-(224 * 224) // 4 :].mean(), abs=1e-12)
        assert peak(maps)[row] == pytest.approx(max(float(value) for value in maps[row].ravel()))
    assert set(CONFIDENCES) >= {"slavc", "peak", "map_max"} and CONFIDENCES["map_max"] is map_max
    np.testing.assert_array_equal(confidence("peak", maps), peak(maps))
    with pytest.raises(HearflowError, match="unknown confidence 'top'"):
        confidence("top", maps)


def test_predictions_give_any_named_confidence_and_nan_for_nan_maps():
    maps = np.random.default_rng(2).uniform(-1, 1, (3, 7, 7)).astype(np.float32)
    maps[1, 0, 0] = np.nan
    predictions = Predictions(["a", "b", "c"], maps, np.array([0.1, np.nan, 0.3], np.float32))
    values = predictions.confidence_of("slavc")
    assert np.isnan(values[1]) and values[0] == slavc_confidence(maps[[0]])[0]
    assert predictions.confidence_of("map_max")[2] == pytest.approx(0.3)


def test_evaluate_refuses_an_unknown_confidence_before_loading_anything(tmp_path, capsys):
    status = main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path),
                   "--annotations", str(tmp_path), "--confidence", "top"])
    assert status != 0 and "unknown confidence 'top'; choose one of map_max, peak, slavc" in capsys.readouterr().err


# ---------------------------------------------------------------- a folder's recipe against a checkpoint's


def test_recipe_differences_name_what_changes_the_inputs():
    recorded = {"sample_rate": 16000, "seconds": 3.0, "flow_method": "farneback", "flow_size": 256, "flow_pairs": 1}
    assert recipe_differences(recorded, "hearflow", preset_config("htf").data) == []  # no audio_centre: key-frame
    found = recipe_differences(recorded, "hearflow", preset_config("htf-released").data)
    assert [line.split(":")[0] for line in found] == ["sample_rate", "audio_centre", "flow_size"]
    assert recipe_differences({}, "released", preset_config("htf-released").data) == []
    assert [line.split(":")[0] for line in recipe_differences({}, "released", preset_config("htf").data)] == [
        "sample_rate", "flow_size"]
