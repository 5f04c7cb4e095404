"""Audio as mono float32 at a target rate: a window around a time, or the whole track.

Decoding uses PyAV; channels are mixed to mono by their mean (`mono`) at the file's
own rate, and the rate change uses `resample` (polyphase, zero-phase, so sample ``k``
of the output is at time ``k / rate`` of the input and a sound stays where it was).

Times are seconds from the start of the file, the clock of `hearflow.media.video`.
The compressed packets of the track are demuxed (or taken from an open
`VideoFile`), and only those around the window are decoded, with a short pre-roll.

The window rule (`read_audio_window`, data.audio_centre ``key-frame``): a window of
``seconds`` centred on ``center_s``. Where that
window would cross the start or the end of the audio track, it is shifted inside
the track (same length, same content a player would play, no padding). Only when
the whole track is shorter than the window is it tiled (repeated from its start,
as the released code does). The released Flickr test rule (`read_middle_window`,
data.audio_centre ``clip-middle``) cuts the window around the middle of the whole track
instead, with the release's slicing (`middle_window`).
"""

from __future__ import annotations

import functools
import itertools
from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import firwin, resample_poly

from hearflow.errors import HearflowError
from hearflow.media.video import VideoFile, _open

PREROLL_S = 0.15  # decoded before a window, so codecs with overlap (AAC, Opus 80 ms, MP3) settle
MARGIN_S = 0.05  # extra audio on each side of the window, so resampling has no edge effect


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample along the first axis (n or n x channels) with a polyphase filter; float32 out.

    ``scipy.signal.resample_poly`` with its default Kaiser (beta 5) low-pass, whose taps
    are designed once per rate pair instead of at every call.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise HearflowError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return audio
    common = gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // common, int(from_rate) // common
    return resample_poly(audio, up, down, axis=0, window=_lowpass(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The taps resample_poly designs for float32 input: firwin(20 max + 1, 1 / max), Kaiser 5."""
    rate = max(up, down)
    taps = firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)).astype(np.float32)
    taps.flags.writeable = False  # resample_poly copies it before scaling
    return taps


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole first audio track, mono float32 (n,) at `sample_rate`."""
    with _open(path) as container:
        stream = _audio_stream(container, path)
        samples, _, rate = _decode(_demux_audio(container, stream), stream, _start_s(container), path)
    if len(samples) == 0:
        raise HearflowError(f"{path}: the audio stream has no decodable samples")
    return resample(samples, rate, sample_rate)


def middle_window(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """The released code's Flickr test cut: ``seconds`` around the middle of a whole track.

    samples: mono (n,) at ``rate`` Hz, the whole track. The middle is that of the track's
    whole seconds, ``m = floor(n / rate) / 2`` s, and the cut is the slice
    ``[int((m - seconds / 2) * rate), int((m + seconds / 2) * rate))`` with Python's slicing
    rules, so it lies up to 0.5 s before the exact middle ``n / 2``. A cut shorter than
    the window (a track under ``seconds``) is tiled from its start; the result has
    ``int(seconds * rate)`` samples, float32. (The release wrote 22,050 for ``rate``; its
    files were at that rate.)
    """
    middle = float(len(samples) // rate) / 2
    cut = np.asarray(samples[int((middle - seconds / 2) * rate) : int((middle + seconds / 2) * rate)])
    length = int(seconds * rate)
    if len(cut) == 0:
        raise HearflowError("the audio track has no samples around its middle")
    if len(cut) < length:
        cut = np.tile(cut, length // len(cut) + 1)
    return cut[:length].astype(np.float32)


def read_middle_window(source: str | Path | VideoFile, seconds: float, sample_rate: int) -> np.ndarray:
    """`middle_window` of the whole first audio track at ``sample_rate`` (data.audio_centre
    ``clip-middle``): the track is decoded and resampled whole, as the release loaded it."""
    if isinstance(source, VideoFile) and source.audio_packets is not None:
        samples, _, rate = _decode(source.audio_packets, source.audio_stream, source.info.start_s, source.path)
        if len(samples) == 0:
            raise HearflowError(f"{source.path}: the audio stream has no decodable samples")
        whole = resample(samples, rate, sample_rate)
    else:
        whole = read_audio(source.path if isinstance(source, VideoFile) else source, sample_rate)
    return middle_window(whole, sample_rate, seconds)


def read_audio_window(source: str | Path | VideoFile, center_s: float, seconds: float, sample_rate: int) -> np.ndarray:
    """Mono float32 (round(seconds * sample_rate),): `seconds` of audio centred on `center_s`.

    `source` is an open `VideoFile` (whose audio packets are already in memory) or a
    path (then one seek to the window, from the track length the container
    declares, and only the packets around it are read). Only the packets around the
    window are decoded; see the module docstring for the window rule at the ends of
    the track. Raises HearflowError when there is no audio stream or no decodable audio.

    A `VideoFile`'s windows share its decoder. Codecs that synthesise noise (AAC's
    perceptual noise substitution) draw it from the decoder's random state, so a second
    window of the same `VideoFile` can differ from a first one in those bands; a path,
    or a fresh `VideoFile` per window (what prepare does), gives the same window every time.
    """
    if isinstance(source, VideoFile) and source.audio_packets is not None:
        return _window(source.audio_packets, source.audio_stream, source.info.start_s, center_s, seconds,
                       sample_rate, source.path)
    path = source.path if isinstance(source, VideoFile) else source
    with _open(path) as container:
        stream = _audio_stream(container, path)
        start_s = _start_s(container)
        extent = _declared_extent(container, stream, start_s)
        if extent is not None and extent[1] - extent[0] >= seconds:
            window_start = min(max(center_s - seconds / 2, extent[0]), extent[1] - seconds)
            low, high = _ticks_around(window_start, seconds, start_s, stream)
            try:
                container.seek(max(int(low), 0), stream=stream, backward=True)
                packets = _demux_audio(container, stream, low, high)
            except av.FFmpegError:
                packets = []
            window = _window_from(packets, stream, start_s, window_start, seconds, sample_rate, path)
            if window is not None:
                return window
            container.seek(0)  # the declared length or the seek was wrong: read the whole track
        return _window(_demux_audio(container, stream), stream, start_s, center_s, seconds, sample_rate, path)


_FULL_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63, "flt": 1.0, "dbl": 1.0}


def mono(frame) -> np.ndarray:
    """A decoded PyAV audio frame as mono float32 in [-1, 1]: the mean of its channels.

    (The mean, as librosa's ``to_mono`` that the released code used; FFmpeg's own
    downmix would scale stereo by 1/sqrt(2) per channel instead.)
    """
    channels = frame.layout.nb_channels
    if frame.format.name == "fltp" and channels <= 2:  # what AAC, Opus and Vorbis decode to: no copies
        planes = [np.frombuffer(plane, np.float32, frame.samples) for plane in frame.planes[:channels]]
        return planes[0].copy() if channels == 1 else (planes[0] + planes[1]) / np.float32(2)
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    kind = frame.format.name.rstrip("p")
    if kind == "u8":
        data = (data.astype(np.float32) - 128.0) / 128.0
    else:
        data = data.astype(np.float32) / np.float32(_FULL_SCALE[kind])
    return data[0] if channels == 1 else data.sum(axis=0) / np.float32(channels)


def _audio_stream(container, path):
    if not container.streams.audio:
        raise HearflowError(f"{path}: no audio stream")
    return container.streams.audio[0]


def _start_s(container) -> float:
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _declared_extent(container, stream, start_s: float) -> tuple[float, float] | None:
    """(start, end) of the audio track in seconds as the container declares them, if it does."""
    track_start = float(stream.start_time * stream.time_base) - start_s if stream.start_time is not None else 0.0
    if stream.duration:
        return track_start, track_start + float(stream.duration * stream.time_base)
    if container.duration:
        return track_start, container.duration / av.time_base
    return None


def _ticks_around(window_start: float, seconds: float, start_s: float, stream) -> tuple[float, float]:
    """The window with its pre-roll and margins, in the stream's timestamp units."""
    ticks = 1.0 / float(stream.time_base)
    return (window_start - MARGIN_S - PREROLL_S + start_s) * ticks, (window_start + seconds + MARGIN_S + start_s) * ticks


def _demux_audio(container, stream, low: float | None = None, high: float | None = None) -> list:
    """The audio packets (compressed, so small) overlapping ``[low, high]`` ticks (default: all).

    Stops after `high` and where a damaged file breaks.
    """
    packets = []
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if packet.pts is not None and high is not None and packet.pts > high:
                break
            if packet.pts is None or low is None or packet.pts + (packet.duration or 0) >= low:
                packets.append(packet)
    except (av.FFmpegError, EOFError):
        pass
    return packets


def _window(packets, stream, start_s, center_s, seconds, sample_rate, path) -> np.ndarray:
    """The window from all of a track's packets (their timestamps give the track's extent)."""
    length = int(round(seconds * sample_rate))
    if not packets:
        raise HearflowError(f"{path}: the audio stream has no packets")
    if packets[0].pts is not None and packets[-1].pts is not None:
        time_base = stream.time_base
        first, last = packets[0], packets[-1]
        extent = (float(first.pts * time_base) - start_s, float((last.pts + (last.duration or 0)) * time_base) - start_s)
        if extent[1] - extent[0] >= seconds:
            window_start = min(max(center_s - seconds / 2, extent[0]), extent[1] - seconds)
            low, high = _ticks_around(window_start, seconds, start_s, stream)
            selected = [p for p in packets if p.pts is None or (p.pts + (p.duration or 0) >= low and p.pts <= high)]
            window = _window_from(selected, stream, start_s, window_start, seconds, sample_rate, path)
            if window is not None:
                return window
    samples, t0, rate = _decode(packets, stream, start_s, path)
    if len(samples) == 0:
        raise HearflowError(f"{path}: the audio stream has no decodable samples")
    track_start = t0 or 0.0
    track_seconds = len(samples) / rate
    if track_seconds < seconds:
        whole = resample(samples, rate, sample_rate)
        return np.tile(whole, -(-length // len(whole)))[:length]
    window_start = min(max(center_s - seconds / 2, track_start), track_start + track_seconds - seconds)
    return _cut(samples, track_start, rate, window_start, length, sample_rate)


def _window_from(packets, stream, start_s, window_start, seconds, sample_rate, path) -> np.ndarray | None:
    """The window decoded from the packets around it, or None when they do not cover it.

    The decoded span is the truth (decoders trim priming and padding), so the window
    is shifted inside it where it pokes out.
    """
    if not packets:
        return None
    samples, t0, rate = _decode(packets, stream, start_s, path)
    if t0 is None or len(samples) < seconds * rate:
        return None
    window_start = min(max(window_start, t0), t0 + len(samples) / rate - seconds)
    return _cut(samples, t0, rate, window_start, int(round(seconds * sample_rate)), sample_rate)


def _decode(packets, stream, start_s, path):
    """Decode `packets` to mono float32 at the stream's rate: (samples, t0, rate).

    t0 is the time of the first sample (None when the frames carry no timestamps).
    Damaged packets are skipped; a gap or jump of more than 10 ms in the frames'
    timestamps is honoured (silence, or a restart), smaller jitter is ignored.
    """
    context = stream.codec_context
    rate = context.sample_rate or stream.rate
    if not rate:
        raise HearflowError(f"{path}: the audio stream declares no sample rate")
    if context.is_open:
        context.flush_buffers()
    seconds_per_tick = float(stream.time_base)
    pieces, t0, position = [], None, 0
    for packet in itertools.chain(packets, [None]):
        try:
            frames = context.decode(packet)
        except (av.FFmpegError, EOFError):
            continue  # a damaged packet: its samples are missing, the timestamps keep the rest in place
        for frame in frames:
            if frame.pts is not None:
                time_s = frame.pts * seconds_per_tick - start_s
                if t0 is None and not pieces:
                    t0 = time_s
                elif t0 is not None:
                    expected = int(round((time_s - t0) * rate))
                    if abs(expected - position) > rate // 100:
                        position = max(expected, 0)
            data = mono(frame)
            pieces.append((position, data))
            position += len(data)
    if not pieces:
        return np.zeros(0, np.float32), t0, rate
    samples = np.zeros(max(start + len(data) for start, data in pieces), np.float32)
    for start, data in pieces:
        samples[start : start + len(data)] = data
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
