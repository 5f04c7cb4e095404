"""hearflow.media.video: frame counts, frame-exact seeking, rotation, VFR, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from hearflow.errors import HearflowError
from hearflow.media import video as video_module
from hearflow.media.frame_stream import iter_frame_pairs
from hearflow.media.video import VideoFile, key_frame_index, probe, read_frame_pair, read_frames
from media_fixtures import index_frame, read_index, sequential_frames, tone_track, write_audio_only, write_video

# (file name, write_video keyword arguments): containers, codecs and GOP structures
CODECS = {
    "h264_bframes.mp4": {},
    "h264_gop7.mp4": {"gop": 7},
    "h264_10bit.mp4": {"pix_fmt": "yuv420p10le"},
    "h264.mkv": {},
    "vp9.webm": {},
    "mpeg4.avi": {},
    "hevc.mkv": {"video_codec": "libx265", "options": {"x265-params": "log-level=error"}},
    "odd_size_444.mkv": {"size": (97, 61), "pix_fmt": "yuv444p"},
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    made = {}
    for name, options in CODECS.items():
        options = {"size": (96, 64), **options}
        made[name] = write_video(folder / name, 41, 25, **options)
    return made


@pytest.mark.parametrize("name", list(CODECS))
def test_every_pair_is_what_a_sequential_decode_gives(videos, name):
    path = videos[name]
    reference = sequential_frames(path)
    info = probe(path)
    assert info.n_frames == len(reference) == 41
    assert (info.width, info.height) == (reference[0].shape[1], reference[0].shape[0])
    assert [read_index(frame) for frame in reference] == list(range(41))
    for index in range(info.n_frames - 1):
        frame, next_frame = read_frames(path, index, 2, info)
        assert np.array_equal(frame, reference[index]), f"frame {index}"
        assert np.array_equal(next_frame, reference[index + 1]), f"frame {index + 1}"


@pytest.mark.parametrize("name", list(CODECS))
def test_video_file_reads_the_same_frames_from_memory(videos, name):
    path = videos[name]
    reference = sequential_frames(path)
    with VideoFile(path) as reused:  # one decoder, reset between requests
        for index in (40 - 1, 0, 17, 3, 30):
            frames = reused.read_frames(index, 2)
            assert all(np.array_equal(a, b) for a, b in zip(frames, reference[index : index + 2])), index
    for index in range(0, 40, 3):  # a fresh file each time: the decoder continues from opening
        with VideoFile(path) as fresh:
            assert fresh.info == probe(path)
            frames = fresh.read_frames(index, 2)
        assert all(np.array_equal(a, b) for a, b in zip(frames, reference[index : index + 2])), index


def test_decoding_stops_at_the_last_wanted_packet(videos, monkeypatch):
    # With B-frames a decoder holds frames back; instead of feeding it more packets until
    # the wanted ones come out, hearflow drains it once their packets are in.
    fed = []
    packet_ts = video_module._packet_ts
    monkeypatch.setattr(video_module, "_packet_ts", lambda packet: fed.append(packet_ts(packet)) or fed[-1])
    path = videos["h264_bframes.mp4"]
    with VideoFile(path) as video:
        frames = video.read_frames(20, 2)
        wanted = set(video.info.frame_pts[20:22])
    assert wanted <= set(fed) and fed[-1] in wanted
    reference = sequential_frames(path)
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference[20:22]))


def test_large_files_are_read_again_with_a_seek(videos, monkeypatch):
    monkeypatch.setattr(video_module, "KEEP_PACKETS_MAX_BYTES", 0)
    path = videos["h264_gop7.mp4"]
    reference = sequential_frames(path)
    with VideoFile(path) as video:
        assert video.audio_packets is None
        for index in (0, 20, 38):
            assert all(np.array_equal(a, b) for a, b in zip(video.read_frames(index, 3), reference[index : index + 3]))


def test_default_pair_is_the_middle_frame(videos):
    path = videos["h264_bframes.mp4"]
    pair = read_frame_pair(path)
    assert pair.index == 41 // 2 == key_frame_index(41)
    assert (read_index(pair.frame), read_index(pair.next_frame)) == (20, 21)
    assert pair.time_s == pytest.approx(20 / 25)
    assert key_frame_index(2) == 0 and key_frame_index(3) == 1 and key_frame_index(10) == 5


def test_pair_by_time_and_at_the_end(videos):
    path = videos["h264_gop7.mp4"]
    assert read_frame_pair(path, time_s=0.5).index == 12  # frame 12 shows from 0.48 s to 0.52 s
    assert read_frame_pair(path, time_s=0.479).index == 11
    last = read_frame_pair(path, index=40)  # the last frame has no successor: the last pair
    assert (last.index, read_index(last.next_frame)) == (39, 40)
    with pytest.raises(HearflowError, match="41 frames"):
        read_frame_pair(path, index=41)


def test_variable_frame_rate_maps_time_to_the_right_frame(tmp_path):
    times = np.cumsum([0.0] + [0.02, 0.07] * 12)[:25]
    path = write_video(tmp_path / "vfr.mp4", 25, 30, frame_times=list(times))
    info = probe(path)
    assert info.n_frames == 25
    assert [info.frame_time(i) for i in range(25)] == pytest.approx(list(times), abs=1e-3)
    assert info.fps == pytest.approx(24 / times[-1], rel=1e-3)
    for index in (3, 12, 17):
        pair = read_frame_pair(path, time_s=times[index] + 0.005)
        assert pair.index == index and read_index(pair.frame) == index
        assert pair.time_s == pytest.approx(times[index], abs=1e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_comes_out_in_display_orientation(tmp_path, rotation):
    path = write_video(tmp_path / "phone.mp4", 6, 25, (96, 64), rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation % 360
    assert (info.width, info.height) == ((64, 96) if rotation % 180 else (96, 64))
    coded = sequential_frames(path)
    pair = read_frame_pair(path)
    assert pair.frame.shape == (info.height, info.width, 3)
    # VideoFrame.rotation is counter-clockwise: np.rot90 turns the coded frame the same way
    assert np.array_equal(pair.frame, np.rot90(coded[3], k=(rotation % 360) // 90))
    assert read_index(np.rot90(pair.frame, k=-((rotation % 360) // 90))) == 3


def test_truncated_file_counts_the_frames_it_really_has(tmp_path):
    full = write_video(tmp_path / "full.mkv", 90, 30, (96, 64))
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(cut)) as container:
        declared = container.duration / av.time_base
    info = probe(cut)
    assert 20 < info.n_frames < 80 and declared == pytest.approx(3.0, abs=0.05)
    assert info.duration_s == pytest.approx(info.n_frames / 30, abs=0.01)
    pair = read_frame_pair(cut)
    assert pair.index == info.n_frames // 2
    assert read_index(pair.frame) == pair.index


def test_4k_frame_pair(tmp_path):
    frames = [index_frame(i, 3840, 2160) for i in range(3)]
    path = write_video(tmp_path / "uhd.mp4", 3, 25, (3840, 2160), frames=frames, options={"preset": "ultrafast"})
    pair = read_frame_pair(path)
    assert pair.frame.shape == (2160, 3840, 3) and pair.index == 1
    assert (read_index(pair.frame), read_index(pair.next_frame)) == (1, 2)


def test_iter_frame_pairs_streams_consecutive_frames(videos):
    path = videos["h264_bframes.mp4"]
    pairs = list(iter_frame_pairs(path))
    assert [p.index for p in pairs] == list(range(40))
    assert all(read_index(p.frame) == p.index and read_index(p.next_frame) == p.index + 1 for p in pairs)
    every = list(iter_frame_pairs(path, every_s=0.5))  # 25 fps: frames 0, 13 (0.52 s >= 0.5), 25, 38
    assert [p.index for p in every] == [0, 13, 25, 38]
    assert [p.time_s for p in every] == pytest.approx([0.0, 0.52, 1.0, 1.52])


def test_bad_files_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    audio_only = write_audio_only(tmp_path / "song.m4a", tone_track(1.0, 16000), 16000)
    one = write_video(tmp_path / "one.mp4", 1, 25, (64, 48))
    with pytest.raises(HearflowError, match="empty file"):
        probe(empty)
    with pytest.raises(HearflowError, match="not a readable video"):
        probe(text)
    with pytest.raises(HearflowError, match="no video stream"):
        probe(audio_only)
    with pytest.raises(HearflowError, match="no such file"):
        probe(tmp_path / "absent.mp4")
    assert probe(one).n_frames == 1
    with pytest.raises(HearflowError, match="at least 2"):
        read_frame_pair(one)


MEMORY_PROBE = """
import resource, sys
from hearflow.errors import HearflowError
from hearflow.media.frame_stream import iter_frame_pairs
from hearflow.media.video import VideoFile, read_frames
errors = []
for attempt in (lambda: VideoFile(sys.argv[1]), lambda: read_frames(sys.argv[1], 1, 2),
                lambda: list(iter_frame_pairs(sys.argv[1]))):
    try:
        attempt()
        errors.append("read")
    except HearflowError as error:
        errors.append(str(error))
try:  # this process's own peak (ru_maxrss would include the forking parent's, kept across exec)
    peak_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak_kb // 1024)
print("\\n".join(errors))
"""


@pytest.mark.parametrize("declared", ["giant", "small"])
def test_giant_frames_are_refused_with_memory_bounded(tmp_path, declared):
    """16000 x 16000 MJPEG frames (4 MB each on disk, 384 MB decoded): refused before they are
    decoded, whether the file declares the size or a small one (the decoder gets the limit)."""
    import subprocess
    import sys

    from media_fixtures import flat_grey_jpeg, write_mjpeg

    giant, small = flat_grey_jpeg(16000, 16000), flat_grey_jpeg(64, 64)
    frames = [giant] * 3 if declared == "giant" else [small, small, giant, small]
    path = write_mjpeg(tmp_path / "giant.avi", frames, (16000, 16000) if declared == "giant" else (64, 64))
    repository = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": repository})
    assert result.returncode == 0, result.stderr
    peak_mb, *errors = result.stdout.splitlines()
    assert int(peak_mb) < 250  # one decoded frame alone would be 384 MB
    assert len(errors) == 3
    if declared == "giant":
        assert all("declares 16000 x 16000 frames (256 megapixels)" in error and "8192 x 4320" in error
                   for error in errors)
    else:  # opening decodes the first, small frame only; reading reaches the giant one
        assert errors[0] == "read" and all(str(path) in error and "decoding failed" in error for error in errors[1:])
