"""hearflow.localize: heatmaps, peaks and boxes in video pixels, the overlay video, the CLI.

Known answers come from a hand-built model whose similarity map is the mean
brightness of each map cell (`BrightSpotModel`): the peak must then land on the
brightest object of the frame, in the video's own (display) pixels. The CLI runs
with a real (small, untrained) HTF checkpoint on clips from `hearflow.synthetic.clips` and on
odd files written with PyAV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hearflow import build_model
from hearflow.checkpoint import save_checkpoint
from hearflow.cli import main
from hearflow.errors import HearflowError
from hearflow.localize import BOX_THRESHOLD, Localizer, localize_video, make_step, map_peak, peak_and_box, region_box
from hearflow.metrics import heatmap as metric_heatmap
from hearflow.negatives import map_max
from hearflow.synthetic.clips import synthesize
from hearflow.synthetic.presets import demo_config
from media_fixtures import tone_track, write_video

FPS = 25
JSON_KEYS = {"video", "fps", "width", "height", "checkpoint", "object_fusion", "steps"}
STEP_KEYS = {"time_s", "frame", "peak_xy", "box", "confidence", "sounding"}


class BrightSpotModel(torch.nn.Module):
    """A stand-in whose similarity map is each map cell's mean brightness (known answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = demo_config("cpu-small")

    def forward(self, image, flow, spectrogram, flow_fusion=0.0):
        cells = F.avg_pool2d(image.mean(1, keepdim=True), self.config.model.map_stride)[:, 0]
        return SimpleNamespace(similarity=cells)


def square_frame(width, height, box, level=250, background=30):
    """RGB uint8 frame: a flat background with a bright rectangle ``box = (x0, y0, x1, y1)``."""
    frame = np.full((height, width, 3), background, np.uint8)
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = level
    return frame


def inside(point, box):
    x, y = point
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def box_iou(a, b):
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


def read_video(path):
    """(frames RGB list, average fps, duration s, audio codec or None, audio samples mono)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = video.average_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        duration = container.duration / av.time_base
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return frames, fps, duration, None, None
        stream = container.streams.audio[0]
        audio = np.concatenate([frame.to_ndarray().mean(axis=0) for frame in container.decode(stream)])
        return frames, fps, duration, stream.codec_context.name, audio


# --- heatmap, peak and box -------------------------------------------------------------


def slow_peak_and_box(heatmap, threshold):
    """Restatement: raster-first argmax, then a breadth-first flood fill over 8 neighbours."""
    height, width = heatmap.shape
    best = max((heatmap[y, x], -(y * width + x)) for y in range(height) for x in range(width))
    peak = (-best[1] % width, -best[1] // width)
    seen = {(peak[1], peak[0])}
    queue = deque(seen)
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and (ny, nx) not in seen and heatmap[ny, nx] >= threshold:
                    seen.add((ny, nx))
                    queue.append((ny, nx))
    ys = [y for y, _ in seen]
    xs = [x for _, x in seen]
    return peak, (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


@pytest.mark.parametrize("seed", range(12))
def test_peak_and_box_match_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    similarity = rng.standard_normal((5, 6)).astype(np.float32)
    heatmap = metric_heatmap(similarity, 31 + seed, 23)
    assert peak_and_box(heatmap) == slow_peak_and_box(heatmap, BOX_THRESHOLD)


def test_heatmap_is_bicubic_min_max_at_the_video_size():
    similarity = np.zeros((8, 8), np.float32)
    similarity[2, 5] = 1.0  # cell (row 2, column 5)
    heatmap = metric_heatmap(similarity, 320, 180)
    assert heatmap.shape == (180, 320) and heatmap.dtype == np.float32
    assert heatmap.min() == 0.0 and heatmap.max() == 1.0
    (x, y), box = peak_and_box(heatmap)
    assert 5 * 40 <= x < 6 * 40 and 2 * 22.5 <= y < 3 * 22.5  # inside that cell's pixels
    assert inside((x, y), box) and box[2] - box[0] < 100
    assert not metric_heatmap(np.full((7, 7), 0.3, np.float32), 50, 40).any()  # flat map: zeros


def test_localize_arrays_finds_the_bright_object():
    truth = (120, 30, 170, 70)
    frame = square_frame(200, 120, truth)
    localizer = Localizer(BrightSpotModel(), device="cpu")
    step = localizer.localize_arrays(frame, frame.copy(), np.zeros(8000, np.float32), 16000)
    assert step.time_s is None and step.frame is None
    assert step.heatmap.shape == (120, 200)
    assert inside(step.peak_xy, truth)
    assert box_iou(step.box, truth) > 0.3
    assert step.confidence == float(map_max(step.similarity[None])[0]) and step.sounding is None
    with pytest.raises(HearflowError, match="mono"):
        localizer.localize_arrays(frame, frame, np.zeros((100, 2), np.float32), 16000)


def test_steps_follow_the_object_through_a_video(tmp_path):
    """The square jumps from the left to the right half at frame 30: steps say where it is."""
    left, right = (10, 40, 50, 90), (110, 40, 150, 90)
    frames = [square_frame(160, 128, left if i < 30 else right) for i in range(50)]
    path = write_video(tmp_path / "jump.mp4", fps=FPS, size=(160, 128), frames=frames,
                       audio=tone_track(2.0, 16000))
    steps = list(Localizer(BrightSpotModel(), device="cpu").localize(path, every=0.4))
    assert [s.frame for s in steps] == [0, 10, 20, 30, 40]
    assert [s.time_s for s in steps] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6])
    for step in steps:
        assert inside(step.peak_xy, left if step.frame < 30 else right)


def test_step_selection(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n_frames=50, fps=FPS, size=(64, 48), audio=tone_track(2.0, 16000))
    localizer = Localizer(BrightSpotModel(), device="cpu", batch_size=4)
    assert [s.frame for s in localizer.localize(path)] == list(range(50))  # every frame, the last one too
    assert [s.frame for s in localizer.localize(path, every=0.5)] == [0, 13, 25, 38]  # first frame at/after k x 0.5 s
    assert [s.frame for s in localizer.localize(path, every=1 / FPS)] == list(range(50))
    assert [s.frame for s in localizer.localize(path, key_frame_only=True)] == [25]
    with pytest.raises(HearflowError, match="either"):
        list(localizer.localize(path, every=1.0, key_frame_only=True))
    with pytest.raises(HearflowError, match="positive"):
        list(localizer.localize(path, every=0))


def test_rotated_video_is_localized_upright(tmp_path):
    """Coded landscape, displayed portrait (90 degrees): pixels and the overlay are in display orientation."""
    display_truth = (20, 100, 80, 150)  # in the 96 x 160 portrait frame
    upright = square_frame(96, 160, display_truth)
    coded = np.ascontiguousarray(np.rot90(upright, k=-1))  # 160 x 96 as stored; the player turns it back
    path = write_video(tmp_path / "portrait.mp4", fps=FPS, size=(160, 96), frames=[coded] * 20,
                       audio=tone_track(0.8, 16000), rotation=90)
    localizer = Localizer(BrightSpotModel(), device="cpu")
    written = localize_video(localizer, path, tmp_path / "out", every=0.5)
    report = json.loads(written["json"].read_text())
    assert (report["width"], report["height"]) == (96, 160)
    assert report["steps"] and all(inside(step["peak_xy"], display_truth) for step in report["steps"])
    frames, *_ = read_video(written["overlay"])
    assert frames[0].shape == (160, 96, 3)


def test_on_frame_reports_each_decoded_frame_of_the_total(tmp_path):
    """`hearflow serve`'s progress: on_frame(done, total) once per frame, up to (n, n)."""
    path = write_video(tmp_path / "clip.mp4", fps=FPS, size=(96, 64), frames=[square_frame(96, 64, (10, 10, 40, 40))] * 18,
                       audio=tone_track(0.8, 16000))
    calls = []
    localize_video(Localizer(BrightSpotModel(), device="cpu"), path, tmp_path / "out", every=0.25,
                   progress=False, on_frame=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 18) for done in range(1, 19)]


def test_overlay_holds_each_heatmap_until_the_next_step(tmp_path):
    """Steps at frames 0 and 25; the square moves at frame 10, the heat stays on the left until frame 25."""
    left, right = (10, 40, 50, 90), (110, 40, 150, 90)
    frames = [square_frame(160, 128, left if i < 10 else right) for i in range(40)]
    path = write_video(tmp_path / "move.mp4", fps=FPS, size=(160, 128), frames=frames,
                       audio=tone_track(1.6, 16000))
    written = localize_video(Localizer(BrightSpotModel(), device="cpu"), path, tmp_path / "out", every=1.0)
    overlay, fps, _, codec, _ = read_video(written["overlay"])
    assert len(overlay) == 40 and fps == FPS and codec == "aac"

    def heat(frame, box):  # red minus blue of the blend: the jet colormap's hot end is red
        x0, y0, x1, y1 = box
        region = frame[y0:y1, x0:x1].astype(float)
        return region[..., 0].mean() - region[..., 2].mean()

    for index in (5, 15, 24):  # step 0 (square on the left) still shown
        assert heat(overlay[index], left) > heat(overlay[index], right) + 50
    for index in (26, 39):  # step 25 (square on the right)
        assert heat(overlay[index], right) > heat(overlay[index], left) + 50


# --- the CLI on a real (small, untrained) checkpoint -----------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model(config=demo_config("cpu-small"), width=8))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    record = synthesize(out, 1, seed=3, progress=False, seconds=2.0, width=128, height=96)[0]
    return out / "videos" / f"{record['id']}.mp4"


def test_cli_writes_json_overlay_and_stills(tmp_path, checkpoint, clip, capsys):
    out = tmp_path / "out"
    assert main(["localize", str(clip), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--every", "0.2", "--png", "--device", "cpu"]) == 0
    stem = clip.stem
    report = json.loads((out / f"{stem}.json").read_text())
    assert set(report) == JSON_KEYS
    assert (report["video"], report["checkpoint"], report["object_fusion"]) == (str(clip), str(checkpoint), 0.0)
    assert (report["fps"], report["width"], report["height"]) == (FPS, 128, 96)
    assert [step["frame"] for step in report["steps"]] == list(range(0, 50, 5))
    for step in report["steps"]:
        assert set(step) == STEP_KEYS
        x, y = step["peak_xy"]
        x0, y0, x1, y1 = step["box"]
        assert 0 <= x0 <= x < x1 <= 128 and 0 <= y0 <= y < y1 <= 96
        assert step["time_s"] == pytest.approx(step["frame"] / FPS)
        assert -1.2 <= step["confidence"] <= 1.2  # a cosine map's peak at 224 x 224 (bicubic may overshoot a little)
        assert step["sounding"] is None  # the checkpoint is not calibrated
    stills = sorted((out / f"{stem}.steps").iterdir())
    assert [p.name for p in stills] == [f"{step['frame']:06d}.png" for step in report["steps"]]

    frames, fps, duration, codec, audio = read_video(out / f"{stem}.overlay.mp4")
    assert len(frames) == 50 and fps == FPS and frames[0].shape == (96, 128, 3)
    assert duration == pytest.approx(2.0, abs=0.05)
    assert codec == "aac"
    _, _, _, _, source_audio = read_video(clip)
    assert np.array_equal(audio, source_audio)  # the original AAC stream, copied as it is
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith(".")]


def test_cli_key_frame_only_and_no_video(tmp_path, checkpoint, clip):
    out = tmp_path / "out"
    assert main(["localize", str(clip), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--key-frame", "--png", "--device", "cpu"]) == 0
    report = json.loads((out / f"{clip.stem}.json").read_text())
    assert [step["frame"] for step in report["steps"]] == [25]
    frames, *_ = read_video(out / f"{clip.stem}.overlay.mp4")
    assert len(frames) == 50  # the one heatmap on every frame
    assert [p.name for p in (out / f"{clip.stem}.steps").iterdir()] == ["000025.png"]

    assert main(["localize", str(clip), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "json"),
                 "--every", "1", "--no-video", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "json").iterdir()) == [f"{clip.stem}.json"]


@pytest.mark.slow
def test_a_released_checkpoint_brings_its_own_preprocessing(tmp_path, clip):
    """A released-format .pth (random weights): htf-released is picked, with its 22,050 Hz front end."""
    torch.manual_seed(0)
    released = build_model("htf-released")
    path = tmp_path / "released.pth"
    torch.save({"model": released.state_dict()}, path)
    localizer = Localizer.from_checkpoint(path, device="cpu")
    assert localizer.config.preset == "htf-released" and localizer.config.data.sample_rate == 22050
    (step,) = localizer.localize(clip, key_frame_only=True)
    assert step.frame == 25 and step.similarity.shape == (7, 7) and step.heatmap.shape == (96, 128)
    with torch.no_grad():  # the same map as the released model run by hand on the same inputs
        video = localizer.open(clip, None, True, False)
        frames = video.read_frames(25, 2)
        inputs = localizer.inputs(frames, 0, localizer.audio_window(video, video.info.frame_time(25)))
        video.close()
        expected = released.eval()(*(x[None] for x in inputs)).similarity[0].numpy()
    np.testing.assert_allclose(step.similarity, expected, atol=1e-5)


def test_leaving_the_iteration_early_stops_the_reader_thread(clip):
    steps = Localizer(BrightSpotModel(), device="cpu", batch_size=2).localize(clip)
    assert next(steps).frame == 0
    steps.close()
    assert not [t for t in threading.enumerate() if t.name == "hearflow-localize-inputs"]


def test_input_threads_change_nothing_but_speed(checkpoint, clip):
    """Flow, resizes and spectrograms made by 3 threads side by side: the same steps, in order."""
    from hearflow.checkpoint import load

    model = load(checkpoint)
    one = list(Localizer(model, device="cpu", batch_size=4, input_threads=1).localize(clip))
    three = list(Localizer(model, device="cpu", batch_size=4, input_threads=3).localize(clip))
    assert [s.frame for s in three] == [s.frame for s in one] == list(range(len(one)))
    for a, b in zip(one, three):
        assert np.array_equal(a.similarity, b.similarity) and a.peak_xy == b.peak_xy and a.box == b.box
    assert not [t for t in threading.enumerate() if t.name.startswith("hearflow-inputs")]
    steps = Localizer(model, device="cpu", batch_size=2, input_threads=2).localize(clip)
    next(steps)
    steps.close()  # leaving early stops the pool too
    assert not [t for t in threading.enumerate() if t.name.startswith("hearflow-inputs")]
    assert Localizer(model, device="cpu").input_threads == 1  # the model needs the CPU's cores
    with pytest.raises(HearflowError, match="at least 1"):
        Localizer(model, device="cpu", input_threads=0)


def test_flow_fusion_is_the_localizers_option_and_leaves_the_model_as_it_was(checkpoint, clip):
    import copy

    from hearflow.checkpoint import load

    model = load(checkpoint)
    config = copy.deepcopy(model.config)
    fused = Localizer(model, device="cpu", flow_fusion=1.0)
    plain = Localizer(model, device="cpu")
    assert model.config == config  # the caller's model is untouched
    assert (fused.options.flow_fusion, plain.options.flow_fusion) == (1.0, 0.0)
    one, other = next(fused.localize(clip)), next(plain.localize(clip))
    assert not np.array_equal(one.similarity, other.similarity)  # the synthetic clip moves at frame 0
    assert Localizer.from_checkpoint(checkpoint, device="cpu").options.flow_fusion == 0.0
    with pytest.raises(HearflowError, match="non-negative"):
        Localizer(model, device="cpu", flow_fusion=-0.5)


def test_sounding_is_the_calibrated_decision_on_the_confidence():
    frame = square_frame(200, 120, (120, 30, 170, 70))
    audio = np.zeros(8000, np.float32)
    confidence = Localizer(BrightSpotModel(), device="cpu").localize_arrays(frame, frame, audio, 16000).confidence
    for threshold, expected in ((confidence - 1e-3, True), (confidence + 1e-3, False), (confidence, False)):
        step = Localizer(BrightSpotModel(), device="cpu", sounding_threshold=threshold).localize_arrays(
            frame, frame, audio, 16000)
        assert step.sounding is expected and step.to_dict()["sounding"] is expected


def test_a_calibrated_checkpoint_writes_sounding_and_fades_the_overlay(tmp_path, checkpoint, clip):
    from hearflow.checkpoint import load_model, record_inference
    from hearflow.inference import InferenceOptions

    calibrated = record_inference(checkpoint, InferenceOptions(sounding_threshold=5.0), tmp_path / "calibrated.pt")
    assert load_model(calibrated)[1].sounding_threshold == 5.0
    source, _, _, _, _ = read_video(clip)
    changes = {}
    for name, extra in (("silent", []), ("sounding", ["--sounding-threshold", "-5"])):
        out = tmp_path / name
        assert main(["localize", str(clip), "--checkpoint", str(calibrated), "--out", str(out), "--every", "0.5",
                     "--device", "cpu", *extra]) == 0
        steps = json.loads((out / f"{clip.stem}.json").read_text())["steps"]
        assert [step["sounding"] for step in steps] == [name == "sounding"] * len(steps)
        frames, _, _, _, _ = read_video(out / f"{clip.stem}.overlay.mp4")
        changes[name] = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, source)])
    assert changes["silent"] < 0.5 * changes["sounding"]  # the heatmap is faded where nothing visible sounds


def test_each_bad_input_gets_one_error_line_and_the_rest_is_processed(tmp_path, checkpoint, clip, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("this is not a video\n")
    (bad / "empty.mp4").write_bytes(b"")
    write_video(bad / "mute.mp4", n_frames=10, fps=FPS, size=(64, 48))
    write_video(bad / "single.mp4", n_frames=1, fps=FPS, size=(64, 48), audio=tone_track(1.0, 16000))
    inputs = [bad / "text.mp4", clip, bad / "empty.mp4", bad / "missing.mp4", bad / "mute.mp4", bad / "single.mp4"]
    out = tmp_path / "out"
    code = main(["localize", *map(str, inputs), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--every", "0.5", "--device", "cpu"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hearflow: error:")]
    expected = {"text.mp4": "not a readable", "empty.mp4": "empty", "missing.mp4": "no such file",
                "mute.mp4": "--allow-silent", "single.mp4": "at least 2"}
    assert len(errors) == 6 and "5 of 6" in errors[-1]
    for name, reason in expected.items():
        assert len([line for line in errors[:-1] if name in line and reason in line]) == 1, (name, errors)
    assert sorted(p.name for p in out.iterdir()) == [f"{clip.stem}.json", f"{clip.stem}.overlay.mp4"]


def test_allow_silent_localizes_without_audio_and_warns(tmp_path, checkpoint, capsys):
    path = write_video(tmp_path / "mute.mp4", n_frames=12, fps=FPS, size=(64, 48))
    out = tmp_path / "out"
    assert main(["localize", str(path), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--allow-silent", "--device", "cpu"]) == 0
    assert "no audio track" in capsys.readouterr().err
    frames, fps, _, codec, _ = read_video(out / "mute.overlay.mp4")
    assert len(frames) == 12 and codec is None
    assert len(json.loads((out / "mute.json").read_text())["steps"]) == 12


def test_short_variable_rate_clip_with_other_audio_codec(tmp_path, checkpoint):
    """0.8 s (shorter than the 3-s window), irregular frame times, MP3 audio in MKV -> AAC."""
    times = [0.0, 0.03, 0.1, 0.12, 0.2, 0.31, 0.4, 0.45, 0.5, 0.62, 0.7, 0.79]
    path = write_video(tmp_path / "vfr.mkv", n_frames=len(times), fps=FPS, size=(80, 64), frame_times=times,
                       audio=tone_track(0.8, 22050), sample_rate=22050, audio_codec="libmp3lame")
    out = tmp_path / "out"
    assert main(["localize", str(path), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "vfr.json").read_text())
    assert [step["time_s"] for step in report["steps"]] == pytest.approx(times, abs=1e-3)
    frames, _, duration, codec, audio = read_video(out / "vfr.overlay.mp4")
    assert len(frames) == len(times) and codec == "aac"
    assert len(audio) / 22050 == pytest.approx(0.8, abs=0.1)


# --- memory does not grow with the video's length -------------------------------------

# VmHWM, not getrusage: ru_maxrss survives exec, so a child started from this big
# pytest process would report the parent's size.
MEMORY_SCRIPT = """
import sys
from hearflow.localize import Localizer, localize_video
from hearflow.synthetic.presets import demo_config
localizer = Localizer.from_checkpoint(sys.argv[1], device="cpu")
localize_video(localizer, sys.argv[2], sys.argv[3], every=0.5, png=False)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""


@pytest.mark.slow
def test_peak_memory_is_flat_between_a_10_s_and_a_2_min_clip(tmp_path, checkpoint):
    """Peak RSS of the whole run (model, decoding, overlay encoding) in fresh processes.

    Allowed growth: 2 % + 4 MiB (noise of the allocator and of the decoder's threads);
    keeping the frames or the heatmaps of the 2-min clip would add 330 MiB or 35 MiB
    (3,000 frames of 108 KiB, 240 heatmaps of 144 KiB).
    """
    scenes = [square_frame(256, 144, (4 * i, 40, 4 * i + 80, 110)) for i in range(30)]
    peaks = {}
    for seconds in (10, 120):
        n_frames = seconds * FPS
        video = write_video(tmp_path / f"clip{seconds}.mp4", fps=FPS, size=(256, 144),
                            frames=[scenes[i % 30] for i in range(n_frames)], audio=tone_track(seconds, 16000))
        out = tmp_path / f"out{seconds}"
        result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(checkpoint), str(video), str(out)],
                                capture_output=True, text=True, check=True)
        peaks[seconds] = int(result.stdout.split()[-1]) / 1024  # MiB
        frames, *_ = read_video(out / f"clip{seconds}.overlay.mp4")
        assert len(frames) == n_frames
        assert len(json.loads((out / f"clip{seconds}.json").read_text())["steps"]) == seconds * 2
    assert peaks[120] < peaks[10] * 1.02 + 4, peaks


# --- the step is evaluation's, the peak is the map's, the box is documented -------------


def test_map_peak_is_the_centre_of_the_highest_cell():
    similarity = np.zeros((8, 8), np.float32)
    similarity[2, 5] = 1.0  # row 2, column 5 of an 8 x 8 map on a 320 x 180 frame: cells 40 x 22.5 px
    step = make_step(similarity, 320, 180, None, None)
    assert step.peak_xy == (220, 56)  # (floor(5.5 * 40), floor(2.5 * 22.5))
    rng = np.random.default_rng(0)
    for _ in range(20):  # on random maps: inside the argmax cell, the box holds it and lies at level >= 0.6
        similarity = rng.standard_normal((7, 5)).astype(np.float32)
        step = make_step(similarity, 101, 67, None, None)
        row, column = np.unravel_index(np.argmax(similarity), similarity.shape)
        x, y = step.peak_xy
        assert column * 101 / 5 <= x < (column + 1) * 101 / 5 and row * 67 / 7 <= y < (row + 1) * 67 / 7
        assert step.peak_xy == map_peak(similarity, 101, 67)
        assert inside(step.peak_xy, step.box)
        assert step.box == region_box(step.heatmap, step.peak_xy)
        assert step.heatmap[y, x] >= BOX_THRESHOLD  # the highest cell's centre is hot


def test_region_box_is_the_flood_fill_from_the_seed():
    rng = np.random.default_rng(1)
    for seed in range(8):
        heatmap = metric_heatmap(rng.standard_normal((5, 6)).astype(np.float32), 37, 29)
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert region_box(heatmap, (int(x), int(y))) == slow_peak_and_box(heatmap, BOX_THRESHOLD)[1]


@pytest.fixture(scope="module")
def prepared_clip(tmp_path_factory, clip):
    from hearflow.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    config = demo_config("cpu-small")
    prepare(clip.parent, out, config.data, progress=False)
    return out


@pytest.mark.parametrize("prior", ["spatial", "none"])
def test_the_key_frame_step_has_evaluations_map(prepared_clip, clip, prior):
    """The same video through `hearflow prepare` + evaluation's predict, and through localize --key-frame."""
    from hearflow.data.dataset import PreparedDataset
    from hearflow.scoring import predict

    torch.manual_seed(0)
    model = build_model(config=demo_config("cpu-small"), width=8, prior=prior).eval()
    dataset = PreparedDataset(prepared_clip, model.config, train=False)
    evaluated = predict(model, dataset, 1, torch.device("cpu"), progress=False).similarity[0]
    (step,) = Localizer(model, device="cpu", backend="torch").localize(clip, key_frame_only=True)
    np.testing.assert_allclose(step.similarity, evaluated, rtol=0, atol=2e-6)  # channels-last vs contiguous
    assert step.peak_xy == map_peak(evaluated, 128, 96)


# --- what the command says -------------------------------------------------------------


def test_cli_says_what_it_wrote_and_how_fast_and_quiet_says_nothing(tmp_path, checkpoint, clip, capsys):
    folder = tmp_path / "videos" / "deeper"
    folder.mkdir(parents=True)
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    (folder.parent / "b.mp4").write_bytes(clip.read_bytes())
    (folder / "notes.txt").write_text("not a video\n")
    out = tmp_path / "out"
    assert main(["localize", str(tmp_path / "videos"), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--every", "0.5", "--no-video", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    for line, name in zip(lines, ("b", "a")):  # find_videos order: sorted paths
        assert line.startswith(str(tmp_path / "videos")) and f"{name}.mp4: 4 steps, 50 frames in " in line
        assert "frames/s) -> " in line and line.endswith(str(out / f"{name}.json"))
    assert main(["localize", str(folder / "a.mp4"), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--key-frame", "--quiet", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_bad_flag_prints_localizes_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["localize", "clip.mp4", "--checkpoint", "c.pt", "--out", "o", "--evry", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: hearflow localize" in err and "unrecognized arguments: --evry 1" in err


def test_a_synthetic_only_checkpoint_is_named_once(tmp_path, clip, capsys):
    torch.manual_seed(0)
    path = tmp_path / "synthetic.pt"
    save_checkpoint(path, build_model(config=demo_config("cpu-small"), width=8),
                    training_data={"train": "prepared/train", "synthetic": True})
    out = tmp_path / "out"
    assert main(["localize", str(clip), str(clip.with_name("missing.mp4")), "--checkpoint", str(path), "--out",
                 str(out), "--key-frame", "--no-video", "--quiet", "--device", "cpu"]) == 1
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hearflow: note:")]
    assert len(notes) == 1 and "synthetic clips only" in notes[0] and str(path) in notes[0]


def test_checkpoints_record_whether_their_training_clips_were_synthetic(prepared_clip, clip, tmp_path):
    from hearflow.checkpoint import load_checkpoint, trained_on_synthetic
    from hearflow.data.prepared import PreparedFolder, training_data
    from hearflow.prepare import prepare

    assert training_data(PreparedFolder(prepared_clip)) == {"train": str(prepared_clip), "synthetic": True}
    videos = tmp_path / "mine"
    videos.mkdir()
    (videos / "own.mp4").write_bytes(clip.read_bytes())  # the same pixels, but not in a `hearflow synth` folder
    prepare(videos, tmp_path / "prepared", demo_config("cpu-small").data, progress=False)
    assert training_data(PreparedFolder(tmp_path / "prepared"))["synthetic"] is False
    torch.manual_seed(0)
    model = build_model(config=demo_config("cpu-small"), width=8)
    for record, expected in (({"synthetic": True}, True), ({"synthetic": False}, False), (None, False)):
        path = tmp_path / "model.pt"
        save_checkpoint(path, model, **({} if record is None else {"training_data": record}))
        assert trained_on_synthetic(load_checkpoint(path)) is expected
    torch.save({"model": build_model("htf-released").state_dict()}, tmp_path / "released.pth")
    assert trained_on_synthetic(load_checkpoint(tmp_path / "released.pth")) is False


def test_the_storage_round_trip_quantises_the_flow_as_its_png_does():
    from hearflow.data.codecs import decode_flow, encode_flow, quantise_flow

    flow = np.random.default_rng(0).normal(scale=4.0, size=(23, 31, 2)).astype(np.float32)
    assert np.array_equal(quantise_flow(flow), decode_flow(encode_flow(flow)))
    big = flow * np.float32(5000)  # beyond 16 bits at 1/32 pixel: a coarser step, the same rule
    assert np.array_equal(quantise_flow(big), decode_flow(encode_flow(big)))


def test_a_nan_map_is_a_clear_error_naming_the_step_and_nothing_is_written(tmp_path, clip, capsys):
    model = build_model(config=demo_config("cpu-small"), width=8)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))  # a damaged checkpoint
    broken = tmp_path / "broken.pt"
    save_checkpoint(broken, model)
    out = tmp_path / "out"
    assert main(["localize", str(clip), "--checkpoint", str(broken), "--out", str(out), "--key-frame",
                 "--no-video", "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hearflow: error:")]
    assert f"{clip}: the model's map at frame 25 (1.000 s) holds NaN or infinite values" in errors[0]
    assert not out.exists() or not list(out.iterdir())  # no JSON with "confidence": NaN, no temporary


def test_a_giant_frame_file_is_one_error_line(tmp_path, checkpoint, capsys):
    from media_fixtures import flat_grey_jpeg, write_mjpeg

    giant = write_mjpeg(tmp_path / "giant.avi", [flat_grey_jpeg(16000, 16000)] * 3, (16000, 16000))
    assert main(["localize", str(giant), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--key-frame", "--no-video", "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hearflow: error:")]
    assert "declares 16000 x 16000 frames" in errors[0] and str(giant) in errors[0]


def test_temporaries_of_killed_runs_are_removed_but_not_those_of_running_ones(tmp_path, checkpoint, clip):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # another run, still going
    dead, alive = int(ended.stdout), sleeper.pid
    out = tmp_path / "out"
    (out / f"{clip.stem}.steps").mkdir(parents=True)
    stale = [out / f"{clip.stem}.json.tmp-{dead}", out / f".{clip.stem}.overlay.video-only.mp4.tmp-{dead}.tmp-{dead}",
             out / f"{clip.stem}.steps" / f"000003.png.tmp-{dead}"]
    running = out / f"{clip.stem}.overlay.mp4.tmp-{alive}"
    other = out / f"other.json.tmp-{dead}"  # another video's: not this run's to remove
    for path in (*stale, running, other):
        path.write_bytes(b"partial")
    try:
        assert main(["localize", str(clip), "--checkpoint", str(checkpoint), "--out", str(out), "--key-frame",
                     "--device", "cpu"]) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not any(path.exists() for path in stale) and running.exists() and other.exists()
