"""Audio as mono float32 at a target rate: a window around a time, or the whole track.

Decoding uses PyAV (its AudioResampler mixes down to mono float at the file's own
rate); the rate change uses `resample` (polyphase, zero-phase, so sample ``k`` of the
output is at time ``k / rate`` of the input and a sound stays where it was).

Times are seconds from the start of the file, the clock of `hearflow.media.video`.

The window rule: a window of ``seconds`` centred on ``center_s``. Where that
window would cross the start or the end of the audio track, it is shifted inside
the track (same length, same content a player would play, no padding). Only when
the whole track is shorter than the window is it tiled (repeated from its start,
as the released code does).
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from hearflow.errors import HearflowError
from hearflow.media.video import _ffmpeg_message, _open

PREROLL_S = 0.5  # decoded before a window after a seek, so codecs with overlap (AAC) settle
MARGIN_S = 0.1  # extra audio on each side of the window, so resampling has no edge effect


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample along the first axis (n or n x channels) with a polyphase filter; float32 out."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise HearflowError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return audio
    common = gcd(int(from_rate), int(to_rate))
    return resample_poly(audio, int(to_rate) // common, int(from_rate) // common, axis=0).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole first audio track, mono float32 (n,) at `sample_rate`."""
    with _open(path) as container:
        stream = _audio_stream(container, path)
        samples, _, rate = _decode(container, stream, path)
    if len(samples) == 0:
        raise HearflowError(f"{path}: the audio stream has no decodable samples")
    return resample(samples, rate, sample_rate)


def read_audio_window(path: str | Path, center_s: float, seconds: float, sample_rate: int) -> np.ndarray:
    """Mono float32 (round(seconds * sample_rate),): `seconds` of audio centred on `center_s`.

    Decodes only the window (plus a short pre-roll) when the track is long enough;
    see the module docstring for the window rule at the ends of the track.
    Raises HearflowError when the file has no audio stream or no decodable audio.
    """
    length = int(round(seconds * sample_rate))
    with _open(path) as container:
        stream = _audio_stream(container, path)
        start_s = container.start_time / av.time_base if container.start_time is not None else 0.0
        track_start, track_seconds = _declared_extent(container, stream, start_s)
        if track_seconds is not None and track_seconds >= seconds + PREROLL_S:
            track_end = track_start + track_seconds
            window_start = min(max(center_s - seconds / 2, track_start), track_end - seconds)
            decode_from = window_start - MARGIN_S - PREROLL_S
            from_start = decode_from <= track_start
            samples, t0, rate = _decode(
                container, stream, path, None if from_start else decode_from, window_start + seconds + MARGIN_S, start_s
            )
            if t0 is not None and from_start:  # the true start of the track is now known
                window_start = min(max(center_s - seconds / 2, t0), track_end - seconds)
            if t0 is not None and t0 <= window_start + 0.5 / rate and t0 + len(samples) / rate >= window_start + seconds:
                return _cut(samples, t0, rate, window_start, length, sample_rate)
            container.seek(0)  # timestamps or the declared duration were wrong: decode it all
        samples, t0, rate = _decode(container, stream, path, start_s=start_s)
    if len(samples) == 0:
        raise HearflowError(f"{path}: the audio stream has no decodable samples")
    track_start = t0 or 0.0
    track_seconds = len(samples) / rate
    if track_seconds < seconds:
        whole = resample(samples, rate, sample_rate)
        return np.tile(whole, -(-length // len(whole)))[:length]
    window_start = min(max(center_s - seconds / 2, track_start), track_start + track_seconds - seconds)
    return _cut(samples, track_start, rate, window_start, length, sample_rate)


def _audio_stream(container, path):
    if not container.streams.audio:
        raise HearflowError(f"{path}: no audio stream")
    return container.streams.audio[0]


def _declared_extent(container, stream, start_s: float) -> tuple[float, float | None]:
    """(start, duration) of the audio track in seconds, as the container declares them."""
    if stream.start_time is not None and stream.time_base:
        track_start = float(stream.start_time * stream.time_base) - start_s
    else:
        track_start = 0.0
    if stream.duration and stream.time_base:
        return track_start, float(stream.duration * stream.time_base)
    if container.duration:
        return track_start, container.duration / av.time_base - track_start
    return track_start, None


def _decode(container, stream, path, from_s=None, until_s=None, start_s=0.0):
    """Mono float32 samples at the stream's rate from about `from_s` to `until_s`.

    Returns (samples, t0, rate), t0 the time of the first sample (None when the
    frames carry no timestamps, in which case decoding started at the track start).
    """
    rate = stream.codec_context.sample_rate or stream.rate
    if not rate:
        raise HearflowError(f"{path}: the audio stream declares no sample rate")
    if from_s is not None and from_s > 0:
        try:
            container.seek(int((from_s + start_s) / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0)
    mixer = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks, t0 = [], None
    decoded_seconds = 0.0
    try:
        for frame in container.decode(stream):
            if t0 is None:
                t0 = float(frame.pts * stream.time_base) - start_s if frame.pts is not None else None
                if t0 is None and from_s is not None and from_s > 0:
                    return np.zeros(0, np.float32), None, rate
            for mixed in mixer.resample(frame):
                chunks.append(mixed.to_ndarray().reshape(-1))
                decoded_seconds += mixed.samples / rate
            if until_s is not None and t0 is not None and t0 + decoded_seconds >= until_s:
                break
        for mixed in mixer.resample(None):
            chunks.append(mixed.to_ndarray().reshape(-1))
    except (av.FFmpegError, EOFError) as error:
        if not chunks:
            raise HearflowError(f"{path}: audio decoding failed ({_ffmpeg_message(error)})") from None
        # a truncated track: keep what decoded before the damage
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return samples, t0, rate


def _cut(samples: np.ndarray, t0: float, rate: int, window_start: float, length: int, sample_rate: int) -> np.ndarray:
    """`length` samples at `sample_rate` starting at `window_start`, from samples that start at t0."""
    first = max(0, int(np.floor((window_start - MARGIN_S - t0) * rate)))
    last = min(len(samples), int(np.ceil((window_start - t0) * rate + (length / sample_rate + MARGIN_S) * rate)) + 1)
    segment_start = t0 + first / rate
    converted = resample(samples[first:last], rate, sample_rate)
    offset = int(round((window_start - segment_start) * sample_rate))
    window = converted[offset : offset + length]
    if len(window) < length:  # rounding at the very end of the track
        window = np.pad(window, (0, length - len(window)), mode="edge" if len(window) else "constant")
    return window
