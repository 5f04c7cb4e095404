"""Negative audio: the metrics against known answers and slow references, the negatives'
construction, the calibration's known optimum, the training term."""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest
import torch
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.config import Config, negative_kinds
from hearflow.data.dataset import PreparedDataset
from hearflow.data.negatives import (
    NOISE_RMS,
    ClipLabels,
    NegativeAudioDataset,
    Partners,
    TrainingNegatives,
    offscreen_partners,
    read_audio,
    read_labels,
)
from hearflow.data.transforms import audio_window_length, spectrogram
from hearflow.errors import HearflowError
from hearflow.metrics import MAP_SIZE
from hearflow.negatives import (
    auroc,
    calibration_threshold,
    detection_f1,
    map_max,
    mask_iou,
    negative_results,
    pair_ious,
    pia,
    pia_auc,
)



# --- metrics ---------------------------------------------------------------------------


def test_pia_of_a_map_with_a_known_share_above_the_threshold():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.0, 0.5, size=(3, MAP_SIZE, MAP_SIZE)).astype(np.float32)  # 224 x 224: used as it is
    lit = [0, 1000, MAP_SIZE * MAP_SIZE // 4]
    for row, count in enumerate(lit):
        flat = maps[row].reshape(-1)
        flat[rng.choice(flat.size, count, replace=False)] = 0.9
    np.testing.assert_array_equal(pia(maps, 0.6), np.array(lit) / MAP_SIZE**2)
    assert pia(maps, 0.9).max() == 0.0  # strictly above
    # a 7 x 7 map lit in its top three rows, upsampled: three sevenths of the image by symmetry
    small = np.zeros((1, 7, 7), np.float32)
    small[0, :3] = 1.0
    assert pia(small, 0.5)[0] == pytest.approx(3 / 7, abs=1 / MAP_SIZE)


def test_map_max_is_the_bicubic_upsampled_peak_and_pia_lights_exactly_above_it():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 7, 7)).astype(np.float32)
    expected = [cv2.resize(m, (MAP_SIZE, MAP_SIZE), interpolation=cv2.INTER_CUBIC).max() for m in maps]
    np.testing.assert_allclose(map_max(maps), expected, rtol=1e-6)
    confidence = map_max(maps)
    for row, value in enumerate(confidence):
        below, above = np.nextafter(value, -np.inf), np.nextafter(value, np.inf)
        assert pia(maps[row : row + 1], below)[0] > 0 and pia(maps[row : row + 1], value)[0] == 0
        assert pia(maps[row : row + 1], above)[0] == 0


def test_pia_auc_against_a_restatement():
    assert pia_auc([0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert pia_auc([1.0, 1.0]) == pytest.approx(0.025)  # only x = 1 counts them: half the last step
    rng = np.random.default_rng(2)
    values = rng.uniform(size=40)
    xs = [0.05 * i for i in range(21)]
    ys = [sum(v <= x for v in values) / len(values) for x in xs]
    slow = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(20))
    assert pia_auc(values) == pytest.approx(slow)


def test_iou_of_known_masks():
    first = np.zeros((4, 10, 10), bool)
    second = np.zeros((4, 10, 10), bool)
    first[0, :5], second[0, 3:8] = True, True  # 20 shared of 80
    first[1, :5], second[1, :5] = True, True
    first[3, :2] = True  # the second is empty
    result = mask_iou(first.reshape(4, -1), second.reshape(4, -1))
    np.testing.assert_allclose(result, [20 / 80, 1.0, 1.0, 0.0])  # two empty masks: 1


def test_pair_ious_of_a_map_with_itself_and_with_its_negation():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(4, 7, 7)).astype(np.float32)
    same, fixed = pair_ious(maps, maps, threshold=0.0)
    np.testing.assert_array_equal(same, 1.0)
    np.testing.assert_array_equal(fixed, 1.0)
    opposite, _ = pair_ious(maps, -maps)
    assert opposite.max() < 0.02  # the upper halves of a map and of its negation barely meet


def slow_auroc(positive, negative):
    pairs = list(itertools.product(positive, negative))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auroc_of_separable_inseparable_and_random_scores():
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    rng = np.random.default_rng(4)
    for _ in range(5):
        positive = np.round(rng.normal(0.3, 1, size=30), 1)  # rounded: ties happen
        negative = np.round(rng.normal(size=25), 1)
        assert auroc(positive, negative) == pytest.approx(slow_auroc(positive, negative))


def test_calibration_chooses_the_known_optimum():
    # positives 0.9, 0.8, 0.6; negatives 0.7, 0.3: accepting down to 0.6 gives TP 3, FP 1, F1 6/7
    threshold, f1 = calibration_threshold([0.9, 0.8, 0.6, 0.7, 0.3], [1, 1, 1, 0, 0])
    assert threshold == pytest.approx(0.45) and f1 == pytest.approx(6 / 7)
    assert detection_f1([0.9, 0.8, 0.6, 0.7, 0.3], [1, 1, 1, 0, 0], threshold) == pytest.approx(f1)
    # separable: the cut between the lowest positive and the highest negative, F1 1
    assert calibration_threshold([0.9, 0.7, 0.2, 0.1], [1, 1, 0, 0]) == (pytest.approx(0.45), 1.0)
    with pytest.raises(HearflowError, match="at least one positive"):
        calibration_threshold([0.1, 0.2], [0, 0])


def test_calibration_matches_a_brute_force_search():
    rng = np.random.default_rng(5)
    for _ in range(10):
        scores = np.round(rng.uniform(size=30), 2)
        labels = rng.random(30) < 0.4
        labels[0] = True
        threshold, f1 = calibration_threshold(scores, labels)
        candidates = sorted(set(scores) | {scores.min() - 1})
        best = max(detection_f1(scores, labels, t - 1e-9) for t in candidates)
        assert f1 == pytest.approx(best) and detection_f1(scores, labels, threshold) == pytest.approx(f1)


def test_negative_results_of_bright_positives_and_dark_negatives():
    rng = np.random.default_rng(6)
    positive = rng.uniform(0.6, 0.9, size=(6, 7, 7)).astype(np.float32)
    dark = rng.uniform(-0.2, 0.1, size=(6, 7, 7)).astype(np.float32)
    section = negative_results(positive, np.ones(6), {"silence": dark, "no_source": dark[:2]}, threshold=0.3)
    assert section["positive"]["pia"] == 1.0 and section["silence"]["pia"] == 0.0
    assert section["silence"]["pia_auc"] == pytest.approx(1.0)
    assert section["silence"]["iou_at_threshold"] == 0.0  # lit everywhere against dark everywhere
    assert section["silence"]["auroc"] == 1.0 and section["all"]["auroc"] == 1.0
    assert section["silence"]["detection_f1"] == 1.0 and section["all"]["n"] == 8
    assert section["silence"]["map_max"]["mean"] == pytest.approx(float(map_max(dark).mean()))
    assert "iou_median" not in section["no_source"]  # no positive map of the same image
    json.dumps(section, allow_nan=False)
    uncalibrated = negative_results(positive, np.ones(6), {"silence": dark}, threshold=None)
    assert "pia" not in uncalibrated["silence"] and "detection_f1" not in uncalibrated["all"]


# --- construction ------------------------------------------------------------------------


def test_negative_kinds_are_parsed_and_checked():
    assert negative_kinds("offscreen, silence") == ("silence", "offscreen")
    assert negative_kinds("") == ()
    with pytest.raises(HearflowError, match="unknown negative kind.*music"):
        negative_kinds("silence,music")
    with pytest.raises(HearflowError, match="objective.audio_negatives"):
        Config.from_dict({"preset": "htf", "objective": {"audio_negatives": "loud"}})


def test_silence_is_zeros_and_noise_is_white_at_the_documented_level(synth_set):
    config = small_config()
    base = PreparedDataset(synth_set.prepared, config, train=False)
    silence = NegativeAudioDataset(base, "silence")
    noise = NegativeAudioDataset(base, "noise")
    length = audio_window_length(config.data)
    np.testing.assert_array_equal(silence.window(0), np.zeros(length, np.float32))
    window = noise.window(3)
    assert np.sqrt(np.mean(window.astype(np.float64) ** 2)) == pytest.approx(NOISE_RMS, rel=0.02)
    power = np.abs(np.fft.rfft(window)) ** 2
    low, high = power[1 : len(power) // 2].mean(), power[len(power) // 2 :].mean()
    assert low / high == pytest.approx(1.0, abs=0.1)  # white: flat spectrum
    np.testing.assert_array_equal(noise.window(3), window)  # seeded by the sample
    item, own = silence[0], base[0]
    assert torch.equal(item["image"], own["image"]) and torch.equal(item["flow"], own["flow"])
    np.testing.assert_array_equal(item["spectrogram"].numpy(), spectrogram(np.zeros(length), config.data))


def test_offscreen_never_uses_a_clip_of_a_class_in_the_frame():
    rng = np.random.default_rng(7)
    classes = [f"c{k}" for k in range(5)]
    labels = {}
    for index in range(60):
        visible = frozenset(rng.choice(classes, size=2, replace=False))
        sound = None if index % 7 == 0 else str(rng.choice(sorted(visible)))
        labels[f"s{index}"] = ClipLabels(sound, visible)
    ids = list(labels)
    partners = offscreen_partners(ids, labels)
    for sample_id, partner in zip(ids, partners):
        assert partner != sample_id and labels[partner].sound is not None
        assert labels[partner].sound not in labels[sample_id].visible
    assert offscreen_partners(ids, labels) == partners  # reproducible
    # one class everywhere: only the rare exhaustive search finds the single allowed clip
    crowded = {f"s{k}": ClipLabels("a", frozenset({"a"})) for k in range(200)}
    crowded["s199"] = ClipLabels("b", frozenset({"a", "b"}))  # every other clip sounds "a", which it shows
    partners = Partners(list(crowded), crowded)
    assert {list(crowded)[partners.partner(k, np.random.default_rng(k))] for k in range(199)} == {"s199"}
    with pytest.raises(HearflowError, match="no sample can give 's199'"):
        partners.partner(199, np.random.default_rng(0))
    with pytest.raises(HearflowError, match="have no labels"):
        Partners(["x", "unknown"], {"x": crowded["s0"]})


def test_labels_of_synthetic_and_vggss_annotations(synth_set, tmp_path):
    labels = read_labels(synth_set.annotations)
    clips = {record["id"]: record for record in json.loads((synth_set.root / "clips.json").read_text())}
    for sample_id, record in clips.items():
        assert labels[sample_id].visible == {obj["class"] for obj in record["objects"]}
        assert labels[sample_id].sound == record["sound_class"]
    path = tmp_path / "vggss.json"
    path.write_text(json.dumps([{"file": "a.mp4", "class": "dog", "bbox": [[0, 0, 1, 1]]},
                                {"file": "b", "class": "cat", "bbox": []}]))
    assert read_labels(path) == {"a": ClipLabels("dog", frozenset({"dog"})), "b": ClipLabels("cat", frozenset())}
    assert read_labels(tmp_path) is None  # a Flickr folder names no classes


def test_offscreen_audio_is_the_partners_own_window(synth_set):
    config = small_config()
    base = PreparedDataset(synth_set.prepared, config, train=False)
    partners = offscreen_partners(base.ids, read_labels(synth_set.annotations))
    dataset = NegativeAudioDataset(base, "offscreen", partners)
    for index in (0, 5):
        expected = read_audio(base.folder, partners[index], config.data)
        np.testing.assert_array_equal(dataset.window(index), expected)
        np.testing.assert_array_equal(dataset[index]["spectrogram"].numpy(), spectrogram(expected, config.data))


def test_training_negatives_are_seeded_by_epoch_and_sample(synth_set):
    config = small_config(**{"objective.audio_negatives": "silence,noise,offscreen"})
    base = PreparedDataset(synth_set.prepared, config, train=True)
    dataset = TrainingNegatives(base, config.objective.audio_negatives, read_labels(synth_set.annotations))
    kinds = [dataset[index]["negative_kind"] for index in range(len(dataset))]
    assert set(kinds) <= {0, 1, 2} and len(set(kinds)) > 1
    again = TrainingNegatives(PreparedDataset(synth_set.prepared, config, train=True), "silence,noise,offscreen",
                              read_labels(synth_set.annotations))
    for index in (0, 7):
        assert torch.equal(dataset[index]["negative_spectrogram"], again[index]["negative_spectrogram"])
    silent = TrainingNegatives(base, "silence")
    length = audio_window_length(config.data)
    np.testing.assert_array_equal(silent[2]["negative_spectrogram"].numpy(), spectrogram(np.zeros(length), config.data))
    dataset.set_epoch(1)
    assert base.epoch == 1 and [dataset[index]["negative_kind"] for index in range(len(dataset))] != kinds
