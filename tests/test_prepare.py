"""`hearflow prepare` end to end: the layout, bad inputs, ids/keyframes, shards, resume, timeouts."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from hearflow.cli import main
from hearflow.data.codecs import decode_flow
from hearflow.data.prepared import CsvLog, MANIFEST_COLUMNS, PreparedFolder, encode_wav, read_wav
from hearflow.errors import HearflowError
from hearflow.media.flow import working_size
from hearflow.data.lists import (
    key_frame_from_one_based,
    parse_shard,
    read_ids,
    read_keyframes,
    shard_of,
)
from media_fixtures import (
    click_track,
    index_frame,
    read_index,
    sequential_frames,
    tone_track,
    write_audio_only,
    write_video,
)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def by_id(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in rows(path)}


def stored_index(out: Path, sample_id: str, rotation: int = 0) -> int:
    frame = cv2.cvtColor(cv2.imread(str(out / "frames" / f"{sample_id}.jpg")), cv2.COLOR_BGR2RGB)
    return read_index(np.rot90(frame, k=-(rotation // 90)))


def small_clip(path: Path, n_frames: int = 24, size=(96, 64), seconds: float = 1.0) -> Path:
    return write_video(path, n_frames, 24, size, audio=tone_track(seconds, 16000), sample_rate=16000)


# ---------------------------------------------------------------- every kind of input

GOOD = {  # name -> (expected counted frames, rotation)
    "plain.mp4": (50, 0),
    "vfr.mp4": (30, 0),
    "phone.mp4": (25, 90),
    "tenbit.mp4": (25, 0),
    "surround.mkv": (25, 0),
    "vp9.webm": (25, 0),
    "mpeg4.avi": (25, 0),
    "odd.mkv": (25, 0),
    "short.mp4": (12, 0),
    "uhd.mp4": (3, 0),
    "two.mp4": (2, 0),
    "cut.mkv": (None, 0),  # truncated: as many frames as survived
}
BAD = {  # name -> stage
    "empty.mp4": "probe",
    "notes.mp4": "probe",
    "audio_only.mp4": "probe",
    "no_index.mp4": "probe",
    "one_frame.mp4": "probe",
    "no_audio.mp4": "audio",
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    src = tmp_path_factory.mktemp("zoo")
    write_video(src / "plain.mp4", 50, 12.5, (160, 120), audio=click_track(4.0, 44100, 2.0, 2), sample_rate=44100)
    times = list(np.cumsum([0.0] + [0.03, 0.08] * 15)[:30])
    write_video(src / "vfr.mp4", 30, 30, (96, 64), frame_times=times, audio=tone_track(2.0, 32000), sample_rate=32000)
    write_video(src / "phone.mp4", 25, 25, (96, 64), rotation=90, audio=tone_track(1.0, 16000), sample_rate=16000)
    write_video(src / "tenbit.mp4", 25, 25, (96, 64), pix_fmt="yuv420p10le", audio=tone_track(1.0, 8000), sample_rate=8000)
    write_video(src / "surround.mkv", 25, 25, (96, 64), audio=tone_track(1.0, 48000, channels=6), sample_rate=48000)
    write_video(src / "vp9.webm", 25, 25, (96, 64), audio=tone_track(1.0, 48000, channels=2), sample_rate=48000)
    write_video(src / "mpeg4.avi", 25, 25, (96, 64), audio=tone_track(1.0, 22050), sample_rate=22050)
    write_video(src / "odd.mkv", 25, 25, (97, 61), pix_fmt="yuv444p", audio=tone_track(1.0, 11025),
                sample_rate=11025, audio_codec="pcm_s16le")
    write_video(src / "short.mp4", 12, 24, (96, 64), audio=tone_track(0.5, 16000), sample_rate=16000)
    uhd = [index_frame(i, 3840, 2160) for i in range(3)]
    write_video(src / "uhd.mp4", 3, 25, (3840, 2160), frames=uhd, options={"preset": "ultrafast"},
                audio=tone_track(0.12, 16000), sample_rate=16000)
    write_video(src / "two.mp4", 2, 25, (96, 64), audio=tone_track(0.2, 16000), sample_rate=16000)
    (src / "empty.mp4").touch()
    (src / "notes.mp4").write_text("not a video\n" * 50)
    write_audio_only(src / "audio_only.mp4", tone_track(1.0, 16000), 16000)
    whole = write_video(src / "whole.mp4", 40, 25, (96, 64), audio=tone_track(1.6, 16000), sample_rate=16000)
    (src / "no_index.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # index (moov) at the end
    whole.unlink()
    whole = write_video(src / "whole.mkv", 60, 25, (96, 64), audio=tone_track(2.4, 16000), sample_rate=16000)
    (src / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    whole.unlink()
    write_video(src / "one_frame.mp4", 1, 25, (96, 64), audio=tone_track(1.0, 16000), sample_rate=16000)
    write_video(src / "no_audio.mp4", 25, 25, (96, 64))
    return src


@pytest.fixture(scope="module")
def zoo_out(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo_out") / "prepared"
    status = main(["prepare", str(zoo), str(out), "--workers", "2", "--quiet"])
    return out, status


def test_every_input_is_prepared_or_recorded(zoo_out, capsys):
    out, status = zoo_out
    assert status == 0
    manifest = by_id(out / "manifest.csv")
    failures = by_id(out / "failures.csv")
    assert set(manifest) == {Path(name).stem for name in GOOD}
    assert {sample_id: row["stage"] for sample_id, row in failures.items()} == {Path(n).stem: s for n, s in BAD.items()}
    assert all(row["error"] for row in failures.values())
    assert "empty file" in failures["empty"]["error"]
    assert "no video stream" in failures["audio_only"]["error"]
    assert "no audio stream" in failures["no_audio"]["error"]
    assert "at least 2" in failures["one_frame"]["error"]
    assert not list(out.rglob("*.tmp-*"))


def test_manifest_rows_and_stored_key_frames(zoo, zoo_out):
    out, _ = zoo_out
    manifest = by_id(out / "manifest.csv")
    assert list(rows(out / "manifest.csv")[0]) == list(MANIFEST_COLUMNS)
    for name, (n_frames, rotation) in GOOD.items():
        row = manifest[Path(name).stem]
        if n_frames is None:
            n_frames = len(sequential_frames(zoo / name))
            assert 10 < n_frames < 60, name
        key = min(n_frames // 2, n_frames - 2)
        assert int(row["n_frames"]) == n_frames, name
        assert int(row["key_frame"]) == key, name
        assert int(row["rotation"]) == rotation, name
        assert stored_index(out, row["id"], rotation) == key, name
        width, height = int(row["width"]), int(row["height"])
        assert (int(row["frame_width"]), int(row["frame_height"])) == working_size(width, height, 256), name
        flow = decode_flow((out / "flow" / f"{row['id']}.png").read_bytes())
        assert flow.dtype == np.float32 and flow.shape == (int(row["frame_height"]), int(row["frame_width"]), 2)
        assert float(row["flow_mean_magnitude"]) == pytest.approx(np.linalg.norm(flow.astype(np.float64), axis=-1).mean(), rel=1e-3, abs=2**0.5 / 64)  # |v| moves by at most the quantisation's 1/64 per component
        with wave.open(str(out / "audio" / f"{row['id']}.wav")) as handle:
            assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, 16000)
            assert handle.getnframes() == 48000
    assert (manifest["phone"]["width"], manifest["phone"]["height"]) == ("64", "96")
    assert (manifest["uhd"]["frame_width"], manifest["uhd"]["frame_height"]) == ("455", "256")
    assert (manifest["odd"]["frame_width"], manifest["odd"]["frame_height"]) == ("97", "61")


def test_stored_frame_is_the_sequentially_decoded_key_frame(zoo, zoo_out):
    out, _ = zoo_out
    reference = sequential_frames(zoo / "plain.mp4")[25]
    stored = cv2.cvtColor(cv2.imread(str(out / "frames" / "plain.jpg")), cv2.COLOR_BGR2RGB)
    assert stored.shape == reference.shape
    assert np.abs(stored.astype(int) - reference).mean() < 2.0  # JPEG quality 95
    audio, rate = read_wav(out / "audio" / "plain.wav")
    # the click at 2.0 s sits at the key frame's time (25 / 12.5 fps = 2.0 s): the window's middle
    assert rate == 16000 and np.argmax(np.abs(audio) > 0.3) / rate == pytest.approx(1.5, abs=0.001)


def test_prepared_folder_reads_the_hearflow_layout(zoo_out):
    out, _ = zoo_out
    folder = PreparedFolder(out)
    assert folder.layout == "hearflow" and set(folder.ids) == {Path(n).stem for n in GOOD}
    sample = folder.read("plain")
    assert sample.frame.shape == (120, 160, 3) and sample.frame.dtype == np.uint8
    assert sample.flow.shape == (120, 160, 2) and sample.flow.dtype == np.float32
    assert sample.audio.shape == (48000,) and sample.sample_rate == 16000
    assert folder.rows["plain"]["key_frame"] == "25" and folder.recipe["flow_method"] == "farneback"
    with pytest.raises(HearflowError, match="'nope' is not in"):
        folder.read("nope")


def test_rerun_skips_everything(zoo, zoo_out, capsys):
    out, _ = zoo_out
    before = (out / "manifest.csv").read_bytes(), (out / "failures.csv").read_bytes()
    assert main(["prepare", str(zoo), str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert f"prepared 0, skipped {len(GOOD) + len(BAD)}" in line
    assert ((out / "manifest.csv").read_bytes(), (out / "failures.csv").read_bytes()) == before


def test_other_recipe_in_the_same_folder_is_refused(zoo, zoo_out, capsys):
    out, _ = zoo_out
    assert main(["prepare", str(zoo), str(out), "--size", "128", "--quiet"]) == 1
    assert "another recipe" in capsys.readouterr().err


# ---------------------------------------------------------------- the released layout and files


def test_released_layout_reader(tmp_path):
    root = tmp_path / "released"
    for folder in ("frames", "flow/flow_x", "flow/flow_y", "audio"):
        (root / folder).mkdir(parents=True)
    frame = index_frame(3, 60, 40)
    cv2.imwrite(str(root / "frames" / "a.jpg"), frame[..., ::-1])
    cv2.imwrite(str(root / "flow" / "flow_x" / "a.jpg"), np.full((40, 60), 200, np.uint8))
    cv2.imwrite(str(root / "flow" / "flow_y" / "a.jpg"), np.full((40, 60), 10, np.uint8))
    stereo = (np.stack([np.full(2205, 1000), np.full(2205, 3000)], 1)).astype(np.int16)
    from scipy.io import wavfile

    wavfile.write(root / "audio" / "a.wav", 22050, stereo)
    cv2.imwrite(str(root / "frames" / "b.jpg"), frame)  # b has no flow or audio
    folder = PreparedFolder(root)
    assert folder.layout == "released" and folder.ids == ["a", "b"]
    sample = folder.read("a")
    assert sample.frame.shape == (40, 60, 3) and np.abs(sample.frame.astype(int) - frame).mean() < 4
    assert sample.flow.shape == (40, 60, 2) and sample.flow.dtype == np.float32
    assert sample.flow[..., 0].mean() == pytest.approx(200, abs=1) and sample.flow[..., 1].mean() == pytest.approx(10, abs=1)
    assert sample.sample_rate == 22050 and sample.audio == pytest.approx(np.full(2205, 2000 / 32768), abs=1e-6)
    assert folder.missing_files("b") == [root / "flow" / "flow_x" / "b.jpg", root / "flow" / "flow_y" / "b.jpg",
                                         root / "audio" / "b.wav"]
    with pytest.raises(HearflowError, match=r"sample 'b': missing .*flow_x.*b\.jpg"):
        folder.read("b")
    with pytest.raises(HearflowError, match="not a prepared folder"):
        PreparedFolder(root / "audio")


def test_missing_file_in_hearflow_layout_names_id_and_path(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    small_clip(src / "x.mp4")
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    (out / "audio" / "x.wav").unlink()
    with pytest.raises(HearflowError, match=r"sample 'x': missing .*audio.x\.wav"):
        PreparedFolder(out).read("x")


def test_wav_reader_formats(tmp_path):
    from scipy.io import wavfile

    ramp = np.linspace(-0.5, 0.5, 101)
    cases = {
        "u8": (np.round(ramp * 128 + 128).astype(np.uint8), 1 / 128),
        "i16": (np.round(ramp * 32768).astype(np.int16), 1 / 32768),
        "i32": (np.round(ramp * 2**31).astype(np.int32), 1e-6),
        "f32": (ramp.astype(np.float32), 1e-7),
    }
    for name, (data, tolerance) in cases.items():
        wavfile.write(tmp_path / f"{name}.wav", 8000, np.stack([data, data], 1))
        audio, rate = read_wav(tmp_path / f"{name}.wav")
        assert rate == 8000 and audio.dtype == np.float32 and audio == pytest.approx(ramp, abs=tolerance), name
    (tmp_path / "ours.wav").write_bytes(encode_wav(ramp, 16000))
    audio, rate = read_wav(tmp_path / "ours.wav")
    assert rate == 16000 and audio == pytest.approx(ramp, abs=1 / 32767)


def test_csv_log_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("id,video,stage,error\na,a.mp4,probe,bad\nb,b.mp4,pro")
    log = CsvLog(path, ("id", "video", "stage", "error"))
    assert [row["id"] for row in log.rows] == ["a"]
    log.append({"id": "c", "video": "c.mp4", "stage": "decode", "error": "two\nlines, and a comma"})
    assert [row["id"] for row in rows(path)] == ["a", "c"]
    assert rows(path)[1]["error"] == "two\nlines, and a comma"  # kept exactly, quoted
    # A record torn inside a quoted line break is dropped whole, not read as a row and a half.
    with open(path, "ab") as handle:
        handle.write(b'"d\nwith a break",d.mp4,probe,"cut\n')
    assert [row["id"] for row in CsvLog(path, ("id", "video", "stage", "error")).rows] == ["a", "c"]
    assert path.read_bytes().endswith(b'"two\nlines, and a comma"\n')


# ---------------------------------------------------------------- selecting inputs


def test_read_ids_formats(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("id\nabc-DEF_gh_000012\n12345678\n\n")
    assert read_ids(plain) == ["abc-DEF_gh_000012", "12345678"]
    vggsound = tmp_path / "vggsound.csv"
    vggsound.write_text("---g-f_I2yQ,1,people marching,test\nabc_000030,30,dog,train\n")
    assert read_ids(vggsound) == ["---g-f_I2yQ_000001", "abc_000030"]
    flickr = tmp_path / "flickr.csv"
    flickr.write_text("10000130166,202\n10007936344,0\n")
    assert read_ids(flickr) == ["10000130166", "10007936344"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(HearflowError, match="no ids"):
        read_ids(empty)


def test_flickr_keyframe_rule():
    assert key_frame_from_one_based(77, 200) == 76  # 1-based -> 0-based
    assert key_frame_from_one_based(200, 200) == 198  # the last frame: minus 2, so a next frame exists
    assert key_frame_from_one_based(1, 200) == 0
    assert key_frame_from_one_based(250, 200) == 198


def test_reads_the_published_keyframe_file(reference_data):
    keyframes = read_keyframes(reference_data / "flickr_test_keyframes.csv")
    lines = (reference_data / "flickr_test_keyframes.csv").read_text().splitlines()[1:]
    assert len(keyframes) == len(lines) > 100
    sample_id, indices = lines[0].split(",")
    assert keyframes[sample_id] == int(indices.split()[0])
    assert all(value >= 1 for value in keyframes.values())


def test_ids_and_keyframes_select_and_place_the_key_frame(tmp_path, capsys):
    src = tmp_path / "videos"
    (src / "sub").mkdir(parents=True)
    small_clip(src / "yt-ID_x_000012.mp4", 30)
    small_clip(src / "sub" / "4242.mp4", 30)
    small_clip(src / "777.mkv", 30)
    small_clip(src / "unwanted.mp4", 30)
    ids = tmp_path / "ids.txt"
    ids.write_text("yt-ID_x_000012\n4242\n777\nnot_downloaded_000001\n")
    keyframes = tmp_path / "keyframes.csv"
    keyframes.write_text("flickr_id,frame_indices\n4242,7 9 11\n777,30 29\n")
    out = tmp_path / "out"
    status = main(["prepare", str(src), str(out), "--ids", str(ids), "--keyframes", str(keyframes), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0
    manifest = by_id(out / "manifest.csv")
    assert set(manifest) == {"yt-ID_x_000012", "4242", "777"}
    assert {k: int(v["key_frame"]) for k, v in manifest.items()} == {"yt-ID_x_000012": 15, "4242": 6, "777": 28}
    assert stored_index(out, "4242") == 6 and stored_index(out, "777") == 28
    assert (out / "missing_ids.txt").read_text().split() == ["not_downloaded_000001"]
    assert "1 id(s)" in captured.err


def test_list_file_input_missing_paths_and_duplicate_ids(tmp_path):
    small_clip(tmp_path / "a.mp4")
    (tmp_path / "other").mkdir()
    small_clip(tmp_path / "other" / "a.mp4")
    (tmp_path / "list.txt").write_text("# clips\na.mp4\ngone.mp4\nother/a.mp4\n")
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "list.txt"), str(out), "--quiet"]) == 0
    assert by_id(out / "manifest.csv")["a"]["video"] == str(tmp_path / "a.mp4")
    failures = {row["video"]: row for row in rows(out / "failures.csv")}
    gone, duplicate = failures[str(tmp_path / "gone.mp4")], failures[str(tmp_path / "other" / "a.mp4")]
    assert gone["stage"] == "input" and "no such file" in gone["error"]
    assert duplicate["stage"] == "input" and "duplicate id 'a'" in duplicate["error"]


def test_shards_cover_every_id_once():
    ids = [f"clip{i:05d}" for i in range(2000)]
    for count in (1, 3, 8):
        shards = [{i for i in ids if shard_of(i, count) == s} for s in range(count)]
        assert sum(len(s) for s in shards) == len(ids) and set().union(*shards) == set(ids)
        assert min(len(s) for s in shards) > 0.8 * len(ids) / count
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/3", "1", "a/b"):
        with pytest.raises(HearflowError, match="--shard"):
            parse_shard(bad)


def test_shard_runs_share_one_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        small_clip(src / f"v{i}.mp4", 8, (64, 48), 0.4)
    out = tmp_path / "out"
    for shard in range(3):
        assert main(["prepare", str(src), str(out), "--shard", f"{shard}/3", "--quiet"]) in (0, 1)
    per_shard = [set(by_id(out / f"manifest.shard-{s}-of-3.csv")) for s in range(3)]
    assert sum(len(s) for s in per_shard) == 7 and set().union(*per_shard) == {f"v{i}" for i in range(7)}
    assert set(PreparedFolder(out).ids) == {f"v{i}" for i in range(7)}


# ---------------------------------------------------------------- resuming, failures, time limits


def outputs(out: Path) -> dict[str, bytes]:
    """Every sample file's bytes, and the manifest rows (order-free)."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
             and p.parent.name in ("frames", "flow", "audio")}
    files["manifest"] = sorted(map(str, (tuple(r.values()) for r in rows(out / "manifest.csv"))))
    files["failures"] = sorted(map(str, (tuple(r.values()) for r in rows(out / "failures.csv"))))
    return files


@pytest.fixture(scope="module")
def resume_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("resume_src")
    for i in range(12):
        write_video(src / f"clip{i:02d}.mp4", 40, 25, (320, 240), audio=tone_track(1.6, 16000), sample_rate=16000)
    (src / "broken.mp4").write_text("garbage")
    return src


@pytest.fixture(scope="module")
def clean_run(resume_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["prepare", str(resume_src), str(out), "--size", "0", "--quiet"]) == 0
    return outputs(out)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_a_clean_run(resume_src, clean_run, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hearflow.cli", "prepare", str(resume_src), str(out), "--size", "0", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.csv"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:  # header + 2 samples
                break
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, mid-sample
        process.wait()
    finished_at_kill = len(rows(manifest))
    assert 2 <= finished_at_kill < 12, "the kill must land in the middle of the run"
    assert main(["prepare", str(resume_src), str(out), "--size", "0", "--quiet"]) == 0
    assert outputs(out) == clean_run
    assert not list(out.rglob("*.tmp-*"))


@pytest.mark.slow
def test_half_finished_samples_are_redone(resume_src, clean_run, tmp_path):
    out = tmp_path / "out"
    assert main(["prepare", str(resume_src), str(out), "--size", "0", "--quiet"]) == 0
    manifest = (out / "manifest.csv").read_text().splitlines(keepends=True)
    # clip03: files but no manifest row; clip05: a row but its flow is gone; a torn last row;
    # leftovers of a killed writer; clip07: a half-written frame under its final name is
    # impossible (atomic), but a stale temporary beside it is not
    kept = [line for line in manifest if not line.startswith(("clip03,", "clip09,"))]
    torn = next(line for line in manifest if line.startswith("clip09,"))[:20]
    (out / "manifest.csv").write_text("".join(kept) + torn)
    (out / "flow" / "clip05.png").unlink()
    (out / "frames" / "clip07.jpg.tmp-99999").write_bytes(b"partial")
    (out / "frames" / "clip03.jpg").write_bytes(b"stale")
    assert main(["prepare", str(resume_src), str(out), "--size", "0", "--quiet"]) == 0
    assert outputs(out) == clean_run
    assert not list(out.rglob("*.tmp-*"))


def test_failures_are_kept_then_retried_on_request(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    small_clip(src / "good.mp4")
    (src / "later.mp4").write_text("still downloading")
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    assert by_id(out / "failures.csv")["later"]["stage"] == "probe"
    small_clip(src / "later.mp4")
    capsys.readouterr()
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    assert "1 failed earlier" in capsys.readouterr().out and "later" not in by_id(out / "manifest.csv")
    assert main(["prepare", str(src), str(out), "--retry-failed", "--quiet"]) == 0
    assert set(by_id(out / "manifest.csv")) == {"good", "later"} and not rows(out / "failures.csv")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
def test_a_hanging_input_times_out_and_the_run_goes_on(tmp_path):
    small_clip(tmp_path / "fine.mp4")
    os.mkfifo(tmp_path / "stuck.mp4")  # opening it blocks forever, like a dead network mount
    (tmp_path / "list.txt").write_text("stuck.mp4\nfine.mp4\n")
    out = tmp_path / "out"
    started = time.monotonic()
    assert main(["prepare", str(tmp_path / "list.txt"), str(out), "--timeout", "3", "--quiet"]) == 0
    assert time.monotonic() - started < 30
    assert set(by_id(out / "manifest.csv")) == {"fine"}
    failure = by_id(out / "failures.csv")["stuck"]
    assert failure["stage"] == "timeout" and "3 s" in failure["error"]


def test_nothing_prepared_is_a_non_zero_exit(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_text("nope")
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--quiet"]) == 1
    assert "no sample could be prepared" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "absent"), str(tmp_path / "out2")]) == 1
    assert main(["prepare", str(tmp_path), str(tmp_path / "out3"), "--shard", "3/3"]) == 1
    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path), str(tmp_path / "out4"), "--flow", "magic"])


def test_dis_and_flow_pairs_options(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    small_clip(src / "a.mp4", 30, (320, 240))
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--flow", "dis", "--flow-pairs", "3", "--size", "120",
                 "--sample-rate", "22050", "--seconds", "2", "--quiet"]) == 0
    row = by_id(out / "manifest.csv")["a"]
    assert (row["flow_method"], row["flow_pairs"], row["frame_width"], row["frame_height"]) == ("dis", "3", "160", "120")
    audio, rate = read_wav(out / "audio" / "a.wav")
    assert rate == 22050 and len(audio) == 44100
