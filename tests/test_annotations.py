"""hearflow.data.annotations: VGG-SS JSON and Flickr XML folders, ids, maps and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hearflow.data.annotations import gt_map_flickr, gt_map_vggss, load_annotations
from hearflow.errors import HearflowError
from test_metrics import write_flickr_xml

ENTRIES = [
    {"file": "abc_000030.mp4", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
    {"file": "def_000010", "class": "silence", "bbox": []},
    {"file": "ghi_000000.wav", "class": "piano", "bbox": [[0.0, 0.0, 0.5, 0.5], [0.4, -2.8e16, 0.9, 1.0]]},
]


def write_json(path, entries):
    path.write_text(json.dumps(entries))
    return path


def test_vggss_json(tmp_path):
    annotations = load_annotations(write_json(tmp_path / "vggss.json", ENTRIES))
    assert annotations.benchmark == "vggss"
    assert annotations.ids == ["abc_000030", "def_000010", "ghi_000000"]
    assert len(annotations) == 3 and "def_000010" in annotations and "abc_000030.mp4" not in annotations
    assert annotations.has_source("abc_000030") and not annotations.has_source("def_000010")
    assert annotations.boxes("ghi_000000") == [(0.0, 0.0, 0.5, 0.5), (0.4, -2.8e16, 0.9, 1.0)]
    for entry, sample_id in zip(ENTRIES, annotations.ids):
        np.testing.assert_array_equal(annotations.gt_map(sample_id), gt_map_vggss(entry["bbox"]))
    assert annotations.gt_map("def_000010").sum() == 0
    maps = annotations.gt_maps(["ghi_000000", "abc_000030"])
    assert maps.shape == (2, 224, 224) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps[1], annotations.gt_map("abc_000030"))
    with pytest.raises(HearflowError, match="'nope' is not annotated in .*vggss.json"):
        annotations.gt_map("nope")


def test_flickr_folder(tmp_path):
    folder = tmp_path / "Annotations"
    folder.mkdir()
    write_flickr_xml(folder / "2000.xml", [(0, 0, 128, 128), (64, 64, 192, 192)])
    write_flickr_xml(folder / "1000.xml", [(10, 20, 30, 40)])
    (folder / "notes.txt").write_text("not an annotation")
    annotations = load_annotations(folder)
    assert annotations.benchmark == "flickr"
    assert annotations.ids == ["1000", "2000"]
    assert annotations.boxes("1000") == [(10 / 256, 20 / 256, 30 / 256, 40 / 256)]
    assert annotations.has_source("2000")
    np.testing.assert_array_equal(annotations.gt_map("2000"), gt_map_flickr(folder / "2000.xml"))
    np.testing.assert_array_equal(annotations.gt_maps(["2000"])[0], gt_map_flickr(folder / "2000.xml"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"file": "a"}', "hold a dict; expected a JSON list"),
        ("[", "cannot read annotations"),
        ("[]", "empty list"),
        ('[{"class": "x", "bbox": []}]', 'entry 0 has no "file"'),
        ('[{"file": "a", "class": "x"}]', 'entry 0 \\(a\\) has no "bbox" list'),
        ('[{"file": "a", "bbox": [[0.1, 0.2, 0.3]]}]', "is not four finite numbers"),
        ('[{"file": "a", "bbox": [[0.1, 0.2, 0.3, NaN]]}]', "is not four finite numbers"),
        ('[{"file": "a", "bbox": []}, {"file": "a.mp4", "bbox": []}]', "annotated twice"),
    ],
)
def test_bad_json_names_the_file_and_the_expected_shape(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HearflowError, match=message) as error:
        load_annotations(path)
    assert "bad.json" in str(error.value)


def test_boxes_that_cannot_be_scored_as_given_are_counted_with_examples(tmp_path):
    entries = [
        {"file": "fine", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
        {"file": "inverted", "bbox": [[0.5, 0.6, 0.1, 0.2]]},
        {"file": "zero", "bbox": [[0.3, 0.3, 0.3, 0.7]]},
        {"file": "pixels", "bbox": [[12, 30, 100, 90]]},
        {"file": "one-sentinel", "bbox": [[0.1, 0.1, 0.6, 0.6], [0.4, -2.8e16, 0.9, 1.0]]},  # as in VGG-SS
        {"file": "silent", "bbox": []},
    ]
    report = load_annotations(write_json(tmp_path / "boxes.json", entries)).box_problems()
    assert [(sample_id, reason.split(" (")[0]) for sample_id, _, reason in report.problems] == [
        ("inverted", "inverted or zero-area"), ("zero", "inverted or zero-area"), ("pixels", "outside [0, 1]"),
        ("one-sentinel", "outside [0, 1]")]
    assert report.unscorable == ["inverted", "zero", "pixels"]  # a sentinel beside a good box is harmless
    line = report.line()
    assert line.startswith(f"annotations {tmp_path / 'boxes.json'}: 4 box(es) of 4 sample(s) cannot be scored")
    assert "inverted [0.5, 0.6, 0.1, 0.2]: inverted or zero-area" in line and "pixels instead of fractions" in line
    assert "3 sample(s) have no usable box and score 0 (e.g. inverted, zero, pixels)" in line and "\n" not in line
    assert load_annotations(write_json(tmp_path / "ok.json", entries[:1])).box_problems().line() is None


def test_deeply_nested_json_is_one_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HearflowError, match="deep.json: nested too deeply"):
        load_annotations(path)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(HearflowError, match="do not exist"):
        load_annotations(tmp_path / "nothing.json")
    with pytest.raises(HearflowError, match="holds no .xml file"):
        load_annotations(tmp_path)
    (tmp_path / "bad.xml").write_text("<annotation>")
    with pytest.raises(HearflowError, match="bad.xml"):
        load_annotations(tmp_path)


def test_real_vggss_annotations(reference_data):
    path = reference_data / "vggss.json"
    entries = json.loads(path.read_text())
    annotations = load_annotations(path)
    assert annotations.benchmark == "vggss"
    assert len(annotations) == len(entries) == 5158
    assert annotations.ids == [entry["file"] for entry in entries]  # real names carry no extension
    no_source = [entry["file"] for entry in entries if not entry["bbox"]]
    assert [i for i in annotations.ids if not annotations.has_source(i)] == no_source
    for entry in entries[:: len(entries) // 25]:
        np.testing.assert_array_equal(annotations.gt_map(entry["file"]), gt_map_vggss(entry["bbox"]))
        assert annotations.boxes(entry["file"]) == [tuple(box) for box in entry["bbox"]]
