"""hearflow.synth: the synthetic benchmark's videos say what its annotations say.

Videos are read back with PyAV directly (not through hearflow.media), so these
tests check the files a user gets.
"""

from __future__ import annotations

import dataclasses
import json

import av
import numpy as np
import pytest

from hearflow.cli import build_parser, main
from hearflow.errors import HearflowError
from hearflow.synthetic.clips import annotation_record, clip_record, synthesize
from hearflow.synthetic.plan import SynthSettings, plan_clip, synth_classes
from hearflow.synthetic.render import render_audio, render_background, render_frames, render_sprite

SHORT = {"seconds": 1.2}  # 30 frames, key frame 15: same drawing, a quarter of the encoding time
MIXED = {"twins": 0.3, "no_source": 0.3, **SHORT}  # the module's clip set
SEED = 16


def _decode_frames(path):
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _decode_audio(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    return samples[0], rate


def _plans(settings, seed, count):
    return [plan_clip(settings, seed, index) for index in range(count)]


def _mask(plan, obj, settings):
    cls = synth_classes(settings.classes)[obj.class_index]
    return render_sprite(obj, cls.shape, cls.texture)[1]


@pytest.fixture(scope="module")
def short_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    records = synthesize(out, 6, seed=SEED, progress=False, **MIXED)
    kinds = ["twin" if r["twin"] else r["no_source"] or "plain" for r in records]
    assert {"plain", "twin", "offscreen", "silence"} <= set(kinds)  # the seed gives every kind of clip
    return out, records


def test_defaults_are_the_demo_benchmark():
    settings = SynthSettings().validate()
    assert (settings.n_frames, settings.key_frame) == (100, 50)
    assert (settings.width, settings.height, settings.sample_rate) == (128, 128, 16000)
    assert len(synth_classes(settings.classes)) == 16
    assert len({c.name for c in synth_classes(128)}) == 128
    assert settings.twins == 0 and settings.no_source == 0
    record = clip_record(plan_clip(settings, 0, 0), settings)
    assert record["key_frame"] == 50 and record["n_frames"] == 100


def test_outputs_agree_with_each_other(short_set):
    out, records = short_set
    clips = json.loads((out / "clips.json").read_text())
    annotations = json.loads((out / "annotations.json").read_text())
    assert clips == records
    assert [a["file"] for a in annotations] == [f"synth{SEED}_{i:05d}" for i in range(6)]
    assert sorted(p.stem for p in (out / "videos").iterdir()) == [a["file"] for a in annotations]
    for clip, annotation in zip(clips, annotations):
        if clip["sounding"] is None:
            assert annotation["bbox"] == []
        else:
            assert annotation["bbox"] == [clip["objects"][clip["sounding"]]["box"]]
            assert annotation["class"] == clip["sound_class"] == clip["objects"][clip["sounding"]]["class"]
    settings = json.loads((out / "synth.json").read_text())
    assert settings["seed"] == SEED and settings["settings"]["twins"] == 0.3


def test_annotations_load_as_a_vggss_benchmark(short_set):
    from hearflow.data.annotations import load_annotations

    out, records = short_set
    annotations = load_annotations(out / "annotations.json")
    assert annotations.benchmark == "vggss" and sorted(annotations.ids) == [r["id"] for r in records]
    for record in records:
        assert annotations.has_source(record["id"]) == (record["sounding"] is not None)
        gt = annotations.gt_map(record["id"])
        if record["sounding"] is not None:
            x0, y0, x1, y1 = record["objects"][record["sounding"]]["box"]
            assert gt.sum() == (int(224 * x1) - int(224 * x0)) * (int(224 * y1) - int(224 * y0))
        else:
            assert gt.sum() == 0


def test_plans_over_many_clips_keep_their_promises():
    settings = SynthSettings(twins=0.25, no_source=0.2, no_source_silence=0.5)
    plans = _plans(settings, 11, 400)
    records = [clip_record(plan, settings) for plan in plans]
    kinds = {"twin": 0, "offscreen": 0, "silence": 0}
    source_moves = []
    for plan, record in zip(plans, records):
        left, right = record["objects"]
        assert 0 <= left["box"][0] and left["box"][2] <= 0.5 <= right["box"][0] and right["box"][2] <= 1
        for obj, rec in zip(plan.objects, record["objects"]):
            x0, y0, x1, y1 = rec["box_pixels"]
            assert 50 <= x1 - x0 <= 64 and 84 <= y1 - y0 <= 112
            assert 0 <= y0 and y1 <= 128
            # inside its half on every frame, and the recorded velocity holds key -> key + 1
            track = obj.positions(settings.n_frames, settings.key_frame)
            half = 0 if obj is plan.objects[0] else 64
            assert track[:, 0].min() >= half and track[:, 0].max() + obj.size[0] <= half + 64
            assert track[:, 1].min() >= 0 and track[:, 1].max() + obj.size[1] <= 128
            step = track[settings.key_frame + 1] - track[settings.key_frame]
            assert np.all(np.abs(step - np.array(obj.velocity)) <= 0.5 + 1e-9)
            assert rec["moves"] == (obj.velocity != (0.0, 0.0))
            if rec["moves"]:
                assert 3.0 - 1e-9 <= np.hypot(*obj.velocity) <= 6.0 + 1e-9
                assert np.any(track[1:] != track[:-1])
            else:
                assert np.all(track == track[0])
        annotation = annotation_record(record)
        if record["no_source"]:
            kinds[record["no_source"]] += 1
            assert record["sounding"] is None and annotation["bbox"] == [] and not record["twin"]
            visible = {o["class"] for o in record["objects"]}
            if record["no_source"] == "silence":
                assert record["sound_class"] is None and annotation["class"] == "silence"
            else:
                assert record["sound_class"] not in visible
        else:
            source_moves.append(record["objects"][record["sounding"]]["moves"])
            classes = [o["class"] for o in record["objects"]]
            assert (len(set(classes)) == 1) == record["twin"]
            kinds["twin"] += record["twin"]
    # shares within ~4 standard errors of the settings
    assert abs(kinds["twin"] / 400 - 0.25) < 0.09
    assert abs((kinds["offscreen"] + kinds["silence"]) / 400 - 0.2) < 0.08
    assert kinds["offscreen"] > 10 and kinds["silence"] > 10
    assert abs(np.mean(source_moves) - 0.75) < 0.1
    silent_moves = [o.moves for p in plans for i, o in enumerate(p.objects) if i != p.sounding]
    assert abs(np.mean(silent_moves) - 0.35) < 0.08


def test_clip_k_depends_only_on_seed_and_k(tmp_path, short_set):
    out, records = short_set
    again = synthesize(tmp_path / "again", 2, seed=SEED, progress=False, **MIXED)
    assert again == records[:2]
    for index in range(2):
        name = f"videos/synth{SEED}_{index:05d}.mp4"
        assert np.array_equal(_decode_frames(out / name), _decode_frames(tmp_path / "again" / name))
    other = synthesize(tmp_path / "other", 2, seed=SEED + 1, progress=False, **SHORT)
    assert [r["objects"] for r in other] != [r["objects"] for r in records[:2]]


def test_parallel_workers_write_the_same_clips(tmp_path, short_set):
    out, records = short_set
    parallel = synthesize(tmp_path / "p", 6, seed=SEED, workers=2, progress=False, **MIXED)
    assert parallel == records
    name = f"videos/synth{SEED}_00005.mp4"
    assert np.array_equal(_decode_frames(out / name), _decode_frames(tmp_path / "p" / name))


def test_decoded_key_frame_shows_the_objects_at_their_boxes(short_set):
    out, records = short_set
    settings = SynthSettings(**MIXED)
    for index, record in enumerate(records):
        plan = plan_clip(settings, SEED, index)
        frames = _decode_frames(out / "videos" / f"{record['id']}.mp4")
        assert frames.shape == (settings.n_frames, 128, 128, 3)
        key = frames[record["key_frame"]].astype(int)
        around = list(render_frames(plan, settings))[record["key_frame"] - 1 : record["key_frame"] + 2]
        rendered = around[1].astype(int)
        background = render_background(plan, settings).astype(int)
        difference = np.abs(key - background).sum(axis=2)
        outside = np.ones(difference.shape, dtype=bool)
        for obj, rec in zip(plan.objects, record["objects"]):
            x0, y0, x1, y1 = rec["box_pixels"]
            assert rec["box"] == [x0 / 128, y0 / 128, x1 / 128, y1 / 128]
            cls = synth_classes(settings.classes)[obj.class_index]
            pixels, mask = render_sprite(obj, cls.shape, cls.texture)
            # the box is tight: the shape touches its four sides
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
            # the rendered key frame has the sprite exactly in the box and background around it
            assert np.array_equal(rendered[y0:y1, x0:x1][mask], pixels[mask])
            ring = np.zeros(outside.shape, dtype=bool)
            ring[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
            ring[y0:y1, x0:x1] = False
            assert np.array_equal(rendered[ring], background[ring])
            # and the decoded key frame shows that picture there (lossy), better than its neighbours do
            errors = [np.abs(key[y0:y1, x0:x1] - frame[y0:y1, x0:x1].astype(int)).mean() for frame in around]
            assert errors[1] < 12 and errors[1] == min(errors)
            inside = np.zeros_like(outside)
            inside[y0:y1, x0:x1] = mask
            outside[y0:y1, x0:x1] = False
            assert np.median(difference[inside]) > 60  # the object stands out from the background
        assert np.median(difference[outside]) < 12  # and nothing else changed the background


def test_moving_objects_move_by_their_velocity_in_the_video(short_set):
    out, records = short_set
    settings = SynthSettings(**MIXED)
    checked = 0
    for index, record in enumerate(records):
        plan = plan_clip(settings, SEED, index)
        frames = _decode_frames(out / "videos" / f"{record['id']}.mp4").astype(int)
        key, after = frames[record["key_frame"]], frames[record["key_frame"] + 1]
        for obj, rec in zip(plan.objects, record["objects"]):
            x0, y0, x1, y1 = rec["box_pixels"]
            mask = _mask(plan, obj, settings)
            patch = key[y0:y1, x0:x1][mask]
            errors = {}
            for dy in range(-8, 9):
                for dx in range(-8, 9):
                    if 0 <= x0 + dx and x1 + dx <= 128 and 0 <= y0 + dy and y1 + dy <= 128:
                        moved = after[y0 + dy : y1 + dy, x0 + dx : x1 + dx][mask]
                        errors[dx, dy] = np.abs(moved - patch).mean()
            best = np.array(min(errors, key=errors.get))
            assert np.all(np.abs(best - np.array(rec["velocity"])) <= 1.0), (record["id"], best, rec["velocity"])
            checked += rec["moves"]
    assert checked >= 2


def test_free_layout_keeps_objects_apart_on_the_key_frame():
    settings = SynthSettings(layout="free", objects=3, object_scale=0.6).validate()
    for plan in _plans(settings, 5, 100):
        record = clip_record(plan, settings)
        boxes = [o["box_pixels"] for o in record["objects"]]
        for i, a in enumerate(boxes):
            assert 0 <= a[0] and a[2] <= 128 and 0 <= a[1] and a[3] <= 128
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        for obj in plan.objects:
            track = obj.positions(settings.n_frames, settings.key_frame)
            assert track.min() >= 0 and (track + np.array(obj.size)).max() <= 128


def _assert_sounds_like(audio, rate, sound_class, pitch):
    """A tone or bursts peak at the class frequency; a noise band holds most of the energy."""
    expected = sound_class.frequency * pitch
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / rate)
    if sound_class.sound == "noise":
        in_band = (hz > expected / 2**0.25) & (hz < expected * 2**0.25)
        assert spectrum[in_band].sum() > 0.8 * spectrum.sum(), sound_class.name
    else:
        assert abs(hz[np.argmax(spectrum)] - expected) < 0.02 * expected + 2, sound_class.name


def test_each_class_sounds_at_its_own_frequency():
    settings = SynthSettings()
    classes = synth_classes(settings.classes)
    by_class = {}
    for plan in _plans(settings, 2, 120):
        by_class.setdefault(plan.sound_class, plan)
    assert sorted(by_class) == list(range(16))
    assert {c.sound for c in classes} == {"tone", "noise", "bursts"}
    for index, plan in sorted(by_class.items()):
        audio = render_audio(plan, settings)
        assert audio.shape == (64000,) and audio.dtype == np.float32
        _assert_sounds_like(audio, 16000, classes[index], plan.pitch)
    # neighbouring classes never overlap in pitch: the jitter stays within a third of the gap
    frequencies = [c.frequency for c in classes]
    assert all(b / a > 1.15 for a, b in zip(frequencies, frequencies[1:]))


def test_audio_in_the_video_is_the_sounding_class(short_set):
    out, records = short_set
    settings = SynthSettings(**MIXED)
    classes = {c.name: c for c in synth_classes(16)}
    heard = 0
    for index, record in enumerate(records):
        audio, rate = _decode_audio(out / "videos" / f"{record['id']}.mp4")
        assert rate == 16000
        assert 1.2 * 16000 <= len(audio) <= 1.2 * 16000 + 2 * 1024 + 1
        rms = np.sqrt(np.mean(audio[2048:-2048] ** 2))
        if record["sound_class"] is None:  # a silent no-source clip: noise alone, 10 dB down
            assert rms < 0.05
            continue
        assert rms > 0.08
        _assert_sounds_like(audio[1024:-1024], rate, classes[record["sound_class"]], plan_clip(settings, SEED, index).pitch)
        heard += 1
    assert heard >= 2


def test_cli_writes_the_benchmark(tmp_path):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--clips", "2", "--seed", "7", "--size", "64x48", "--twins", "1"]) == 0
    annotations = json.loads((out / "annotations.json").read_text())
    clips = json.loads((out / "clips.json").read_text())
    assert [a["file"] for a in annotations] == ["synth7_00000", "synth7_00001"]
    assert all(c["twin"] and c["width"] == 64 and c["height"] == 48 for c in clips)
    with av.open(str(out / "videos" / "synth7_00001.mp4")) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.average_rate) == (64, 48, 25)
        assert container.streams.audio[0].rate == 16000
    assert main(["synth", str(out), "--clips", "2", "--objects", "3"]) == 1  # halves needs 2


def test_cli_help_states_the_real_defaults():
    defaults = SynthSettings()
    synth = build_parser()._subparsers._group_actions[0].choices["synth"]
    helps = {action.dest: action.help for action in synth._actions}
    for field in dataclasses.fields(SynthSettings):
        if field.name in helps:
            value = getattr(defaults, field.name)
            text = f"{value:g}" if isinstance(value, float) else str(value)
            assert f"(default: {text})" in helps[field.name], field.name
    assert f"(default: {defaults.speed_min:g} {defaults.speed_max:g})" in helps["speed"]
    assert f"(default: {defaults.width}x{defaults.height})" in helps["size"]


def test_bad_settings_are_reported():
    with pytest.raises(HearflowError, match="unknown synthetic setting"):
        synthesize("unused", 1, 0, colour="red")
    with pytest.raises(HearflowError, match="objects must be 2"):
        SynthSettings(objects=3).validate()
    with pytest.raises(HearflowError, match="twin"):
        SynthSettings(layout="free", objects=1, twins=0.5).validate()
    with pytest.raises(HearflowError, match="object_scale"):
        SynthSettings(object_scale=1.5).validate()
    with pytest.raises(HearflowError, match="classes"):
        SynthSettings(classes=2, no_source=0.5).validate()
