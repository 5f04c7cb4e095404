"""hearflow.metrics: known answers, and the vectorised path against a restatement of the
released per-sample evaluation (HTF/LVS test loop, SLAVC's AP) on random inputs."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from hearflow.errors import HearflowError
from hearflow.data.annotations import flickr_consensus_map, gt_map_flickr, gt_map_vggss, read_flickr_boxes
from hearflow.metrics import _binarize, ap_max_f1, ciou, summarize, upsample_maps

# ---------------------------------------------------------------------------------------
# The released evaluation, restated per sample (references for the vectorised code)


@contextlib.contextmanager
def opencv_own_code():
    """cv2.resize on OpenCV's own code path (OpenCV 5 wheels may route it through IPP)."""
    previous = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(previous)


def released_ciou(similarity: np.ndarray, gt_map: np.ndarray) -> float:
    """One sample as the released test_step: resize, normalise, sort, binarise, cIoU."""
    heatmap = cv2.resize(similarity, dsize=(224, 224), interpolation=cv2.INTER_CUBIC)
    low, high = heatmap.min(), heatmap.max()
    if not (high - low) == 0:
        heatmap = (heatmap - low) / (high - low)
    threshold = np.sort(heatmap.flatten())[int(heatmap.shape[0] * heatmap.shape[1] / 2)]
    heatmap[heatmap > threshold] = 1
    heatmap[heatmap < 1] = 0
    infer = np.zeros((224, 224))
    infer[heatmap >= 0.5] = 1
    with np.errstate(invalid="ignore"):
        return np.sum(infer * gt_map) / (np.sum(gt_map) + np.sum(infer * (gt_map == 0)))


def released_cious(maps: np.ndarray, gt_maps: np.ndarray) -> np.ndarray:
    with opencv_own_code():
        return np.array([released_ciou(m, g.astype(np.float64)) for m, g in zip(maps, gt_maps)])


def released_summary(cious: np.ndarray) -> dict[str, float]:
    """The released epoch end: the 21-point curve, sklearn's auc (numpy's trapezoid), cIoU@0.5."""
    results = [np.sum(np.array(cious) >= 0.05 * i) / len(cious) for i in range(21)]
    x = [0.05 * i for i in range(21)]
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return {
        "ciou_at_0_5": np.sum(np.array(cious) >= 0.5) / len(cious),
        "auc": trapezoid(results, x),
        "mean_ciou": np.mean(np.array(cious)),
    }


def released_vggss_map(boxes) -> np.ndarray:
    gt_map = np.zeros([224, 224])
    for item in boxes:
        item = list(map(lambda x: int(224 * max(x, 0)), item))
        temp = np.zeros([224, 224])
        temp[item[1] : item[3], item[0] : item[2]] = 1
        gt_map += temp
    gt_map[gt_map > 0] = 1
    return gt_map


def slavc_precision_recall(has_source, cious, confidence, threshold, ciou_threshold=0.5):
    true_pos = false_pos = false_neg = 0
    for source, value, conf in zip(has_source, cious, confidence):
        if not source:
            false_pos += conf >= threshold
        elif conf >= threshold:
            true_pos += value >= ciou_threshold
            false_pos += value < ciou_threshold
        else:
            false_neg += 1
    precision = 1.0 if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1.0 if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall


def slavc_ap_max_f1(confidence, has_source, cious):
    """SLAVC's EvaluatorFull.calc_ap and its F1 list (max taken), restated."""
    precision, recall = [], []
    skip = max(1, len(cious) // 200)
    for threshold in np.sort(np.array(confidence))[:-1][::-skip]:
        p, r = slavc_precision_recall(has_source, cious, confidence, threshold)
        precision.append(p)
        recall.append(r)
    best = [np.max(precision[i:]) for i in range(len(precision))]
    ap = sum(best[i] * (recall[i + 1] - recall[i]) for i in range(len(best) - 1))
    thresholds = list(sorted(confidence))[:: max(1, len(confidence) // 10)]
    pairs = [slavc_precision_recall(has_source, cious, confidence, t) for t in thresholds]
    f1 = [2 * r * p / (r + p) if r + p > 0 else 0.0 for p, r in pairs]
    return ap, max(f1)


def write_flickr_xml(path, boxes, label="speaker"):
    """A Flickr SoundNet-style annotation: <annotation><bboxes><bbox><label/>xmin..ymax."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = path.stem + ".jpg"
    holder = ET.SubElement(root, "bboxes")
    for box in boxes:
        bbox = ET.SubElement(holder, "bbox")
        ET.SubElement(bbox, "label").text = label
        for name, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bbox, name).text = str(value)
    ET.ElementTree(root).write(path)
    return path


def released_flickr_map(xml_path) -> np.ndarray:
    """The released testset_gt for Flickr, restated."""
    gt = ET.parse(xml_path).getroot()
    gt_map = np.zeros([224, 224])
    boxes = []
    for child in gt:
        for childs in child:
            if childs.tag == "bbox":
                boxes.append([int(224 * int(ch.text) / 256) for index, ch in enumerate(childs) if index > 0])
    for box in boxes:
        temp = np.zeros([224, 224])
        temp[box[1] : box[3], box[0] : box[2]] = 1
        gt_map += temp
    gt_map /= 2
    gt_map[gt_map > 1] = 1
    return gt_map


def row_ramp(n: int = 1) -> np.ndarray:
    """7 x 7 maps increasing down the rows: the prediction is rows 113..223 exactly."""
    return np.repeat(np.arange(7, dtype=np.float32)[None, :, None], 7, axis=2).repeat(n, axis=0)


# ---------------------------------------------------------------------------------------
# Known answers


def test_ramp_prediction_is_the_lower_rows_strictly_above_the_median():
    gt = np.zeros((1, 224, 224), np.float32)
    gt[0, 113:, :] = 1  # exactly the predicted rows
    assert ciou(row_ramp(), gt)[0] == 1.0
    gt[0, 112, :] = 1  # the threshold row itself is not predicted (strictly above t)
    assert ciou(row_ramp(), gt)[0] == pytest.approx(111 / 112, abs=1e-15)


def test_box_against_box():
    # prediction: rows 113..223 (all columns); ground truth: the box y from 0.5 to 1, x from 0.25 to 0.75
    gt = gt_map_vggss([[0.25, 0.5, 0.75, 1.0]])[None]
    # rows 112..223, columns 56..167: intersection 111 x 112, union 112 x 112 + 111 x (224 - 112)
    expected = (111 * 112) / (112 * 112 + 111 * 112)
    assert ciou(row_ramp(), gt)[0] == pytest.approx(expected, abs=1e-15)


def test_flickr_consensus_half_weights(tmp_path):
    # two annotators, full width, rows 0..127 and 64..191 of the 256 grid -> 224 rows 0..111 and 56..167
    xml = write_flickr_xml(tmp_path / "123.xml", [(0, 0, 256, 128), (0, 64, 256, 192)])
    gt = gt_map_flickr(xml)
    assert gt.dtype == np.float32 and gt.shape == (224, 224)
    assert np.all(gt[0:56] == 0.5) and np.all(gt[56:112] == 1.0) and np.all(gt[112:168] == 0.5)
    assert np.all(gt[168:] == 0)
    # prediction rows 113..223: intersection 0.5 x 55 rows, ground truth 2 x 56 rows, outside 56 rows
    assert ciou(row_ramp(), gt[None])[0] == pytest.approx(55 / 336, abs=1e-15)
    # a third box over the overlap: 3 / 2 there, clipped at 1, so the map does not change
    xml3 = write_flickr_xml(tmp_path / "124.xml", [(0, 0, 256, 128), (0, 64, 256, 192), (0, 64, 256, 128)])
    np.testing.assert_array_equal(gt_map_flickr(xml3), gt)


def test_flickr_maps_match_the_released_reader(tmp_path):
    rng = np.random.default_rng(3)
    for index in range(20):
        boxes = []
        for _ in range(rng.integers(1, 5)):
            x0, y0 = rng.integers(0, 200, 2)
            boxes.append((int(x0), int(y0), int(x0 + rng.integers(1, 120)), int(y0 + rng.integers(1, 120))))
        xml = write_flickr_xml(tmp_path / f"{index}.xml", boxes)
        assert read_flickr_boxes(xml) == boxes
        np.testing.assert_array_equal(gt_map_flickr(xml), released_flickr_map(xml))
        np.testing.assert_array_equal(flickr_consensus_map(boxes), released_flickr_map(xml))


def test_flickr_bad_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><bboxes><bbox>")
    with pytest.raises(HearflowError, match="broken.xml"):
        gt_map_flickr(broken)
    empty = tmp_path / "empty.xml"
    empty.write_text("<annotation><filename>x.jpg</filename></annotation>")
    with pytest.raises(HearflowError, match="empty.xml.*no <bbox>"):
        gt_map_flickr(empty)
    for name, box in [("words", ("a", "b", "c", "d")), ("infinite", (0, 0, "inf", 10)), ("short", (1, 2, 3))]:
        xml = write_flickr_xml(tmp_path / f"{name}.xml", [box])
        with pytest.raises(HearflowError, match=f"{name}.xml"):
            gt_map_flickr(xml)
    with pytest.raises(HearflowError, match="missing.xml"):
        gt_map_flickr(tmp_path / "missing.xml")


def test_vggss_map_rules():
    assert gt_map_vggss([]).sum() == 0  # no visible source
    union = gt_map_vggss([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]])
    assert union.dtype == np.float32 and union.max() == 1.0
    assert union.sum() == 2 * 112 * 112 - 56 * 56
    # the file's negative sentinels become 0: an empty box, the other box remains
    assert gt_map_vggss([[0.5, 0.5, -2.88e16, 0.9], [0.0, 0.0, 0.5, 0.5]]).sum() == 112 * 112
    with pytest.raises(ValueError):
        gt_map_vggss([[0.1, 0.2, 0.3]])


def test_summarize_known_answers():
    assert summarize([1.0, 1.0, 1.0]) == {"ciou_at_0_5": 1.0, "auc": pytest.approx(1.0, abs=1e-12), "mean_ciou": 1.0}
    zero = summarize([0.0, 0.0])
    assert zero["ciou_at_0_5"] == 0.0 and zero["auc"] == pytest.approx(0.025, abs=1e-12)
    # fractions >= x: 1 for x <= 0.10, 2/3 up to 0.50, 1/3 up to 0.90, 0 above:
    # area = 0.05 * (sum of the 21 values - (first + last) / 2) = 0.05 * (11 - 0.5)
    three = summarize([0.12, 0.52, 0.91])
    assert three["auc"] == pytest.approx(0.525, abs=1e-12)
    assert three["ciou_at_0_5"] == pytest.approx(2 / 3, abs=1e-15)
    assert three["mean_ciou"] == pytest.approx(1.55 / 3, abs=1e-15)


def test_ap_max_f1_known_answer():
    # thresholds 0.8, 0.7, 0.6: (P, R) = (1/2, 1/3), (1/3, 1/2), (1/2, 1); monotone P = 1/2, 1/2, 1/2
    # AP = 1/2 (1/2 - 1/3) + 1/2 (1 - 1/2) = 1/3; F1 at 0.6, 0.7, 0.8, 0.9 = 2/3, 2/5, 2/5, 1/2
    result = ap_max_f1([0.9, 0.8, 0.7, 0.6], [True, False, True, True], [0.7, 0.0, 0.3, 0.6])
    assert result["ap"] == pytest.approx(1 / 3, abs=1e-15)
    assert result["max_f1"] == pytest.approx(2 / 3, abs=1e-15)


# ---------------------------------------------------------------------------------------
# The vectorised path against the released per-sample loop


def opencv4_cubic(maps: np.ndarray, size: int = 224) -> np.ndarray:
    """OpenCV 4.x's float32 INTER_CUBIC resize, restated operation by operation: Keys'
    weights (A = -0.75) in float32 at source position (d + 0.5) / scale - 0.5, edge taps
    clamped, horizontal products summed left to right, vertical ones as p0 + (p1 + (p2 + p3))."""
    f32 = np.float32

    def taps(source):
        position = ((np.arange(size) + 0.5) * (1.0 / (size / source)) - 0.5).astype(f32)
        start = np.floor(position).astype(np.int64)
        x = position - start.astype(f32)
        a, one = f32(-0.75), f32(1)
        w0 = ((a * (x + one) - f32(5) * a) * (x + one) + f32(8) * a) * (x + one) - f32(4) * a
        w1 = ((a + f32(2)) * x - (a + f32(3))) * x * x + one
        w2 = ((a + f32(2)) * (one - x) - (a + f32(3))) * (one - x) * (one - x) + one
        weights = np.stack([w0, w1, w2, one - w0 - w1 - w2], axis=1).astype(f32)
        return np.clip(start[:, None] + np.arange(-1, 3), 0, source - 1), weights

    columns, column_weights = taps(maps.shape[2])
    rows, row_weights = taps(maps.shape[1])
    p = maps[:, :, columns] * column_weights
    horizontal = ((p[..., 0] + p[..., 1]) + p[..., 2]) + p[..., 3]
    q = horizontal[:, rows, :] * row_weights[None, :, :, None]
    return q[:, :, 0] + (q[:, :, 1] + (q[:, :, 2] + q[:, :, 3]))


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (14, 14), (28, 28), (5, 9), (1, 1), (224, 224)])
def test_resize_is_opencv4_float32_bicubic_bit_for_bit(shape):
    """The resize this machine's OpenCV gives is the released code's arithmetic."""
    rng = np.random.default_rng(sum(shape))
    maps = rng.standard_normal((6, *shape)).astype(np.float32) * rng.uniform(0.01, 100)
    np.testing.assert_array_equal(upsample_maps(maps), opencv4_cubic(maps))


def test_resize_leaves_the_ipp_switch_as_it_was():
    original = cv2.ipp.useIPP()
    try:
        for state in (True, False):
            cv2.ipp.setUseIPP(state)
            before = cv2.ipp.useIPP()  # stays False on a build without IPP
            upsample_maps(np.zeros((1, 7, 7), np.float32))
            assert cv2.ipp.useIPP() == before
    finally:
        cv2.ipp.setUseIPP(original)


def _random_gt(rng, n):
    gt = np.zeros((n, 224, 224), np.float32)
    for i in range(n):
        boxes = [
            [x0, y0, x0 + rng.uniform(0.05, 0.6), y0 + rng.uniform(0.05, 0.6)]
            for x0, y0 in rng.uniform(-0.1, 0.9, (rng.integers(0, 4), 2))
        ]
        if i % 3:
            gt[i] = gt_map_vggss(boxes)
        else:  # Flickr-like consensus on the 256 grid
            gt[i] = flickr_consensus_map([[int(256 * v) for v in box] for box in boxes])
    return gt


def test_ciou_equals_the_released_loop_on_random_maps():
    rng = np.random.default_rng(0)
    n = 120
    maps = rng.standard_normal((n, 7, 7)).astype(np.float32)
    maps[::7] = np.round(maps[::7])  # ties in the map
    maps[1::11] *= 1e-3
    maps[2::13] += 50.0
    gt = _random_gt(rng, n)
    expected = released_cious(maps, gt)
    np.testing.assert_allclose(ciou(maps, gt), expected, rtol=0, atol=1e-12)
    assert summarize(ciou(maps, gt)) == pytest.approx(released_summary(expected), abs=1e-12)


def test_ciou_other_map_sizes_equal_the_released_loop():
    rng = np.random.default_rng(1)
    for shape in [(8, 8), (14, 14)]:
        maps = rng.uniform(-1, 1, (20, *shape)).astype(np.float32)
        gt = _random_gt(rng, 20)
        np.testing.assert_allclose(ciou(maps, gt), released_cious(maps, gt), rtol=0, atol=1e-12)


def test_constant_and_degenerate_maps_follow_the_released_rules():
    gt = np.zeros((4, 224, 224), np.float32)
    gt[:3, 50:150, 50:150] = 1
    maps = np.stack(
        [
            # constant maps whose resize stays exactly constant (1 and powers of two below)
            np.full((7, 7), 1.0),  # constant >= 1: left unnormalised, every pixel predicted
            np.full((7, 7), 0.5),  # constant below 1: nothing predicted
            np.pad(np.ones((3, 7)), ((4, 0), (0, 0))),  # a step: bicubic overshoot above 1
            np.full((7, 7), 0.25),  # nothing predicted and no source: 0/0 in the released code
        ]
    ).astype(np.float32)
    expected = released_cious(maps, gt)
    assert expected[0] == pytest.approx(100 * 100 / 224**2) and expected[1] == 0 and np.isnan(expected[3])
    result = ciou(maps, gt)
    np.testing.assert_array_equal(result[:3], expected[:3])
    assert result[3] == 0.0  # defined: a zero denominator scores 0


def test_binarize_follows_the_released_three_steps():
    """m > t, then m < 1 -> 0, then >= 0.5: differs from m > t when t >= 1 (half the map at 1)."""
    rng = np.random.default_rng(7)
    size = 224 * 224
    rows = [
        np.where(rng.random(size) < 0.6, 1.0, rng.random(size)),  # over half at the maximum: t = 1
        np.round(rng.random(size), 1),  # many ties at t
        rng.random(size),
        np.full(size, 1.0),  # constant maps are left unnormalised
        np.full(size, 2.5),
        np.full(size, 0.75),
    ]
    maps = np.stack(rows).astype(np.float32)
    for row, predicted in zip(maps, _binarize(maps)):
        released = row.copy()
        threshold = np.sort(released)[size // 2]
        released[released > threshold] = 1
        released[released < 1] = 0
        np.testing.assert_array_equal(predicted, released >= 0.5)
    assert _binarize(maps[:1]).sum() == np.count_nonzero(maps[0] == 1)


def test_summarize_equals_the_released_epoch_end():
    rng = np.random.default_rng(5)
    for values in [rng.uniform(0, 1, 1000), np.round(rng.uniform(0, 1, 77), 2), np.array([0.5, 0.05, 1.0])]:
        ours, theirs = summarize(values), released_summary(values)
        assert ours["ciou_at_0_5"] == theirs["ciou_at_0_5"]
        assert ours["auc"] == theirs["auc"]
        assert ours["mean_ciou"] == theirs["mean_ciou"]


@pytest.mark.parametrize("n", [1, 2, 37, 1000])
def test_ap_max_f1_equals_slavc(n):
    rng = np.random.default_rng(n)
    confidence = np.round(rng.uniform(0, 1, n), 2)  # ties included
    has_source = rng.random(n) < 0.7
    cious = np.where(has_source, rng.uniform(0, 1, n), 0.0)
    ap, max_f1 = slavc_ap_max_f1(confidence, has_source, cious)
    result = ap_max_f1(confidence, has_source, cious)
    assert result["ap"] == pytest.approx(ap, abs=1e-12)
    assert result["max_f1"] == pytest.approx(max_f1, abs=1e-12)


def test_ciou_rejects_bad_inputs():
    with pytest.raises(ValueError):
        ciou(np.zeros((2, 7, 7)), np.zeros((3, 224, 224)))
    with pytest.raises(HearflowError, match="NaN"):
        ciou(np.full((1, 7, 7), np.nan), np.zeros((1, 224, 224)))


# ---------------------------------------------------------------------------------------
# The real VGG-SS annotations


def test_vggss_reference_maps(reference_data):
    entries = json.loads((reference_data / "vggss.json").read_text())
    sentinel = [e for e in entries if any(v < 0 for box in e["bbox"] for v in box)]
    assert sentinel, "the real file holds negative sentinels"
    chosen = entries[:40] + sentinel[:10] + [e for e in entries if len(e["bbox"]) >= 4][:10]
    rows, columns = np.mgrid[0:224, 0:224]
    for entry in chosen:
        gt = gt_map_vggss(entry["bbox"])
        union = np.zeros((224, 224), bool)
        for box in entry["bbox"]:
            x0, y0, x1, y1 = (min(224, int(224 * max(v, 0))) for v in box)
            union |= (columns >= x0) & (columns < x1) & (rows >= y0) & (rows < y1)
        assert gt.sum() == union.sum(), entry["file"]
        np.testing.assert_array_equal(gt, released_vggss_map(entry["bbox"]))
