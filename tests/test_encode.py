"""hearflow.media.encode: MP4 files read back with PyAV directly."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from hearflow.errors import HearflowError
from hearflow.media.encode import VideoWriter, aac_sample_rate, mux_audio, write_video


def _frames(n, height=64, width=96, seed=0):
    """Smooth random frames (lossy coding keeps them close) with a moving bright square."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(height // 8, width // 8, 3)).astype(np.uint8)
    background = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    for index in range(n):
        frame = background.copy()
        frame[10:30, 2 * index : 2 * index + 20] = 250
        yield frame


def _read(path):
    """(frames list, fps, audio float32 channels x n, audio rate) decoded with PyAV."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = video.average_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
    audio, rate = None, None
    with av.open(str(path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            rate = stream.rate
            chunks = [frame.to_ndarray() for frame in container.decode(stream)]
            audio = np.concatenate(chunks, axis=1)
    return frames, fps, audio, rate


def test_round_trip_video_and_audio(tmp_path):
    fps, sample_rate, seconds = 25, 16000, 2.0
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_video(tmp_path / "clip.mp4", _frames(50), fps, audio=tone, sample_rate=sample_rate)

    frames, read_fps, audio, rate = _read(path)
    assert len(frames) == 50
    assert read_fps == fps
    assert frames[0].shape == (64, 96, 3)
    expected = list(_frames(50))
    error = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, expected)])
    assert error < 6.0  # of 255, for crf 20
    assert frames[20][12:28, 42:58].mean() > 235  # the square is where frame 20 put it
    assert frames[20][12:28, 62:78].mean() < 210

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert video.format.name == "yuv420p"
        assert float(container.duration / av.time_base) == pytest.approx(seconds, abs=0.1)
    assert rate == sample_rate
    assert audio.shape[0] == 1
    # AAC adds encoder priming/padding of at most two frames.
    assert seconds * rate <= audio.shape[1] <= seconds * rate + 2 * 1024 + 1
    spectrum = np.abs(np.fft.rfft(audio[0, 4000:20000]))
    peak_hz = np.argmax(spectrum) * rate / 16000
    assert peak_hz == pytest.approx(440, abs=3)


def test_stereo_audio_at_an_unsupported_rate_is_resampled(tmp_path):
    sample_rate = 22000  # not an AAC rate: resampled up to 22050
    t = np.arange(sample_rate) / sample_rate
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 1200 * t)], axis=1) * 0.3
    path = write_video(tmp_path / "s.mp4", _frames(10), 10, audio=stereo.astype(np.float32), sample_rate=sample_rate)
    _, _, audio, rate = _read(path)
    assert rate == aac_sample_rate(sample_rate) == 22050
    assert audio.shape[0] == 2
    assert sample_rate * 22050 / 22000 <= audio.shape[1] <= sample_rate * 22050 / 22000 + 2049
    for channel, hz in ((0, 300), (1, 1200)):
        segment = audio[channel, 2048:2048 + 16384]
        peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * rate / len(segment)
        assert peak_hz == pytest.approx(hz, abs=3)


def test_fractional_fps_and_no_audio(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", _frames(12), Fraction(30000, 1001))
    frames, fps, audio, _ = _read(path)
    assert fps == Fraction(30000, 1001)
    assert len(frames) == 12
    assert audio is None


def test_odd_size_is_padded_by_replicating_the_edge(tmp_path):
    odd = [frame[:63, :95] for frame in _frames(5)]
    with VideoWriter(tmp_path / "odd.mp4", 25) as writer:
        for frame in odd:
            writer.write(frame)
    assert writer.size == (96, 64)
    frames, _, _, _ = _read(tmp_path / "odd.mp4")
    assert frames[0].shape == (64, 96, 3)
    assert np.abs(frames[2][:63, :95].astype(int) - odd[2].astype(int)).mean() < 6.0
    # the padding column repeats the last one (black or grey padding would differ by ~100)
    assert np.abs(frames[2][:, 95].astype(int) - frames[2][:, 94]).mean() < 6.0


def test_writer_streams_audio_alongside_frames(tmp_path):
    """The localize stage streams frames and muxes a long original track back in."""
    sample_rate = 48000
    audio = (0.2 * np.random.default_rng(1).standard_normal((3 * sample_rate, 2))).astype(np.float32)
    with VideoWriter(tmp_path / "overlay.mp4", 10, audio=audio, sample_rate=sample_rate) as writer:
        for frame in _frames(20):
            writer.write(frame)
    frames, _, decoded, rate = _read(tmp_path / "overlay.mp4")
    assert len(frames) == 20 and rate == sample_rate
    assert decoded.shape[0] == 2 and decoded.shape[1] >= 3 * sample_rate


def test_is_atomic_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"previous")

    def broken():
        yield from _frames(3)
        raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError):
        write_video(path, broken(), 25)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_frame_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(HearflowError, match="bad.mp4.*uint8"):
        write_video(path, [np.zeros((8, 8, 3), dtype=np.float32)], 25)
    with pytest.raises(HearflowError, match="bad.mp4.*first frame"):
        write_video(path, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], 25)
    with pytest.raises(HearflowError, match="no frames"):
        write_video(path, [], 25)
    with pytest.raises(HearflowError, match="sample_rate"):
        write_video(path, _frames(2), 25, audio=np.zeros(100, np.float32))
    assert not any(tmp_path.iterdir())


def test_same_input_gives_the_same_file_with_one_thread_and_no_lookahead(tmp_path):
    for run in range(20):  # a rare difference would show within a few runs
        path = write_video(tmp_path / f"{run}.mp4", _frames(8), 25, preset="ultrafast", threads=1)
        assert path.read_bytes() == (tmp_path / "0.mp4").read_bytes()


def test_colour_is_tagged_as_the_bt601_conversion_it_uses(tmp_path):
    path = write_video(tmp_path / "c.mp4", _frames(2), 25)
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert (context.color_range, context.colorspace, context.color_primaries, context.color_trc) == (1, 6, 6, 6)
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(frame.astype(int) - next(_frames(1)).astype(int)).mean() < 6


def _click_track(seconds, rate, click_s, channels):
    """Quiet noise with one loud 10 ms click at `click_s`, float32 n x channels."""
    track = 0.01 * np.random.default_rng(2).standard_normal((int(seconds * rate), channels))
    start = int(click_s * rate)
    track[start : start + rate // 100] = 0.8
    return track.astype(np.float32)


def _click_time(audio, rate):
    return np.argmax(np.abs(audio).max(axis=0)) / rate


def _timed_audio(path):
    """(float32 channels x n, rate, time of the first sample in seconds) of the first audio track."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
    return np.concatenate([f.to_ndarray() for f in frames], axis=1), stream.rate, float(frames[0].time)


def _wav(path, track, rate):
    """A PCM WAV file (a source whose track must be re-encoded)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "stereo" if track.shape[1] == 2 else "mono"
        pcm = np.ascontiguousarray((track * 32767).astype(np.int16).reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=stream.layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("source_kind", ["aac", "pcm"])
@pytest.mark.parametrize("start_s", [0.5, -0.3])
def test_mux_audio_puts_the_source_track_beside_the_video_in_step(tmp_path, source_kind, start_s):
    """The localize stage writes a silent overlay, then muxes the original audio from its first frame's time."""
    track = _click_track(2.4, 44100, 1.2, 2)
    if source_kind == "aac":
        source = write_video(tmp_path / "source.mp4", _frames(60), 25, audio=track, sample_rate=44100)
    else:
        source = _wav(tmp_path / "source.wav", track, 44100)
    silent = write_video(tmp_path / "overlay.mp4", _frames(40, seed=5), 25)  # 1.6 s
    out = mux_audio(silent, source, tmp_path / "muxed.mp4", start_s=start_s)

    frames, fps, _, _ = _read(out)
    silent_frames, _, _, _ = _read(silent)
    assert fps == 25 and len(frames) == 40
    assert all(np.array_equal(a, b) for a, b in zip(frames, silent_frames))  # video copied, not re-encoded
    audio, rate, first_s = _timed_audio(out)
    assert rate == 44100 and audio.shape[0] == 2
    # the source's 0 s lands at -start_s: a copied track starts there, a re-encoded one is
    # padded with silence from 0 s; both end at the video's end (to within a packet)
    assert first_s == pytest.approx(max(-start_s, 0) if source_kind == "aac" else 0, abs=0.03)
    assert first_s + audio.shape[1] / rate == pytest.approx(1.6, abs=0.05)
    assert first_s + _click_time(audio, rate) == pytest.approx(1.2 - start_s, abs=0.03)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_mux_audio_copies_an_aac_track_as_it_is(tmp_path):
    source = write_video(tmp_path / "source.mp4", _frames(50), 25, audio=_click_track(2.0, 16000, 0.6, 1), sample_rate=16000)
    silent = write_video(tmp_path / "overlay.mp4", _frames(50, seed=5), 25)
    out = mux_audio(silent, source, tmp_path / "muxed.mp4")
    assert np.array_equal(_timed_audio(out)[0], _timed_audio(source)[0])


def test_mux_audio_reports_a_source_without_audio(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", _frames(5), 25)
    with pytest.raises(HearflowError, match="silent.mp4 has no audio track"):
        mux_audio(silent, silent, tmp_path / "out.mp4")
    with pytest.raises(HearflowError, match="missing.mp4"):
        mux_audio(silent, tmp_path / "missing.mp4", tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
