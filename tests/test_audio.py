"""hearflow.media.audio: window alignment, edges, tiling, channel layouts, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from hearflow.errors import HearflowError
from hearflow.media.audio import mono, read_audio, read_audio_window, resample
from hearflow.media.video import VideoFile
from media_fixtures import click_track, tone_track, write_video

RATE = 16000


def click_position(window: np.ndarray, rate: int = RATE) -> float:
    """Seconds from the window start to the click (its first loud sample)."""
    return float(np.argmax(np.abs(window) > 0.3)) / rate


# (container, audio codec, rate, channels): the layouts and rates real clips come in
LAYOUTS = [
    (".mp4", "aac", 44100, 2),
    (".mp4", "aac", 8000, 1),
    (".mkv", "aac", 48000, 6),
    (".mkv", "pcm_s16le", 22050, 2),
    (".webm", "libopus", 48000, 2),
]


@pytest.mark.parametrize("suffix,codec,rate,channels", LAYOUTS)
def test_click_lands_at_the_right_sample(tmp_path, suffix, codec, rate, channels):
    # A click at 3.217 s in an 8-s clip; windows centred so it falls at several offsets.
    path = write_video(tmp_path / f"clip{suffix}", 50, 6.25, (64, 48), audio=click_track(8.0, rate, 3.217, channels),
                       sample_rate=rate, audio_codec=codec)
    # Matroska stores times in whole milliseconds, so allow 1.5 ms there, 1 ms elsewhere
    tolerance = 0.0015 if suffix in (".mkv", ".webm") and codec != "pcm_s16le" else 0.001
    for center in (3.217, 2.5, 4.1, 3.9):
        window = read_audio_window(path, center, 3.0, RATE)
        assert window.shape == (3 * RATE,) and window.dtype == np.float32
        assert click_position(window) == pytest.approx(3.217 - (center - 1.5), abs=tolerance), center
        with VideoFile(path) as video:  # the packets demuxed with the video give the same window
            assert np.array_equal(read_audio_window(video, center, 3.0, RATE), window)


def test_window_is_shifted_inside_the_track_at_both_ends(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 50, 10, (64, 48), audio=click_track(5.0, 44100, 0.4, 1), sample_rate=44100)
    start = read_audio_window(path, 0.2, 3.0, RATE)  # would start at -1.3 s: starts at 0 instead
    assert click_position(start) == pytest.approx(0.4, abs=0.001)
    late = write_video(tmp_path / "late.mp4", 50, 10, (64, 48), audio=click_track(5.0, 44100, 4.6, 1), sample_rate=44100)
    end = read_audio_window(late, 4.9, 3.0, RATE)  # would end at 6.4 s: ends with the track (5 s)
    assert click_position(end) == pytest.approx(4.6 - 2.0, abs=0.02)
    assert np.abs(end[-RATE // 10 :]).max() > 0.001  # audio up to the end, no zero padding


def test_short_clip_is_tiled(tmp_path):
    path = write_video(tmp_path / "short.mp4", 20, 20, (64, 48), audio=click_track(1.0, 16000, 0.25, 1), sample_rate=16000)
    window = read_audio_window(path, 0.5, 3.0, RATE)
    assert window.shape == (3 * RATE,)
    clicks = np.flatnonzero(np.diff((np.abs(window) > 0.3).astype(int)) == 1) + 1
    whole = read_audio(path, RATE)
    period = len(whole)
    assert period == pytest.approx(RATE, abs=RATE * 0.05)
    assert len(clicks) == 3
    assert np.diff(clicks) == pytest.approx([period, period], abs=1)
    assert clicks[0] / RATE == pytest.approx(0.25, abs=0.001)


def test_channels_are_mixed_to_mono_and_rates_converted(tmp_path):
    tone = tone_track(2.0, 48000, 1000.0, channels=6)
    path = write_video(tmp_path / "surround.mkv", 20, 10, (64, 48), audio=tone, sample_rate=48000, audio_codec="pcm_s16le")
    audio = read_audio(path, 16000)
    assert audio.ndim == 1 and len(audio) == 32000
    # a 1 kHz tone stays a 1 kHz tone at the new rate
    segment = audio[4000:20000]
    frequency = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / len(segment)
    assert frequency == pytest.approx(1000, abs=2)
    assert np.abs(segment).max() > 0.1


@pytest.mark.parametrize("layout, sample_format", [("mono", "fltp"), ("stereo", "fltp"), ("stereo", "flt"),
                                                   ("stereo", "s16p"), ("stereo", "s16"), ("5.1", "fltp")])
def test_mono_is_the_mean_of_the_channels(layout, sample_format):
    """Every sample format against the obvious reference: to_ndarray, full scale, channel mean."""
    import av

    rng = np.random.default_rng(0)
    channels = av.AudioLayout(layout).nb_channels
    planar = sample_format.endswith("p")
    if sample_format.startswith("s16"):
        values = rng.integers(-2**15, 2**15, (channels, 1000)).astype(np.int16)
        reference = values.astype(np.float64) / 2**15
    else:
        values = rng.uniform(-1, 1, (channels, 1000)).astype(np.float32)
        reference = values.astype(np.float64)
    data = values if planar else np.ascontiguousarray(values.T).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
    frame.sample_rate = 48000
    mixed = mono(frame)
    assert mixed.dtype == np.float32 and mixed.shape == (1000,)
    np.testing.assert_allclose(mixed, reference.mean(axis=0), rtol=0, atol=1e-6)


def test_resample_is_scipys_resample_poly_exactly():
    """The cached low-pass taps give bit for bit what resample_poly designs itself."""
    from math import gcd

    from scipy.signal import resample_poly

    rng = np.random.default_rng(2)
    for from_rate, to_rate in [(44100, 16000), (48000, 22050), (8000, 16000), (22050, 16000), (32000, 8000)]:
        common = gcd(from_rate, to_rate)
        for shape in [(4001,), (3000, 2)]:
            audio = rng.standard_normal(shape).astype(np.float32)
            expected = resample_poly(audio, to_rate // common, from_rate // common, axis=0).astype(np.float32)
            assert np.array_equal(resample(audio, from_rate, to_rate), expected), (from_rate, to_rate, shape)


def test_resample_matches_the_analytic_signal():
    rng = np.random.default_rng(1)
    for from_rate, to_rate in [(44100, 16000), (48000, 22050), (8000, 16000), (22050, 22050)]:
        frequency = rng.uniform(100, 1500)
        t_in = np.arange(from_rate) / from_rate
        t_out = np.arange(to_rate) / to_rate
        out = resample(np.sin(2 * np.pi * frequency * t_in), from_rate, to_rate)
        assert out.dtype == np.float32 and out.shape == (to_rate,)
        inner = slice(to_rate // 10, -to_rate // 10)  # away from the edges
        assert np.abs(out[inner] - np.sin(2 * np.pi * frequency * t_out[inner])).max() < 0.01
    stereo = resample(np.ones((4410, 2)), 44100, 16000)
    assert stereo.shape == (1600, 2)


def test_no_audio_stream_is_an_error(tmp_path):
    path = write_video(tmp_path / "silent.mp4", 10, 10, (64, 48))
    with pytest.raises(HearflowError, match="no audio stream"):
        read_audio_window(path, 0.5, 3.0, RATE)


def test_a_window_from_a_path_reads_only_the_packets_around_it(tmp_path, monkeypatch):
    from hearflow.media import audio as audio_module

    path = write_video(tmp_path / "long.mp4", 120, 1, (64, 48), audio=click_track(120.0, 16000, 60.2, 1), sample_rate=16000)
    read = []
    demux = audio_module._demux_audio
    monkeypatch.setattr(audio_module, "_demux_audio", lambda *args: read.append(demux(*args)) or read[-1])
    window = read_audio_window(path, 60.0, 3.0, RATE)
    assert click_position(window) == pytest.approx(1.7, abs=0.001)
    assert len(read) == 1 and len(read[0]) < 100  # of ~1,900 AAC packets in the track
