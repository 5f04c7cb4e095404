"""Frame-exact video access with PyAV: probe, read the key frame and the next one.

Frames are numbered in presentation order from 0. Container-declared frame counts
are often wrong, so `probe` counts the video packets itself (demuxing without
decoding is cheap) and keeps each frame's presentation timestamp; frame ``i`` is the
``i``-th smallest timestamp. Frames are then decoded from the keyframe at or before
the wanted frame, matched by timestamp, so the key frame and the next one come out
of one decoding pass. `VideoFile` does all of it reading the file once (packets kept
in memory); `read_frames` on a path seeks once instead; `hearflow.media.frame_stream`
streams every frame pair.

Times (``time_s``) are seconds from the start of the file (the container's start
time), on the same clock as `hearflow.media.audio`, so a frame and its audio line up.
Frames come out in display orientation: the display-matrix rotation of phone
videos is applied (flips in the matrix are not).
Frames over MAX_FRAME_PIXELS (8K) are refused, declared (checked before decoding) or
not (FFmpeg's decoder gets the limit as ``max_pixels``), so memory stays bounded.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from hearflow.errors import HearflowError


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learned about a video file.

    ``n_frames`` is counted, not declared; ``width`` and ``height`` are the display
    size (swapped for a 90/270 degree rotation); ``rotation`` is the counter-clockwise
    angle (0, 90, 180, 270) applied to decoded frames for display; ``fps`` is the
    average rate over the counted frames and ``duration_s`` = n_frames / fps, the
    length of the frames actually present.
    """

    path: str
    fps: float
    n_frames: int
    width: int
    height: int
    duration_s: float
    rotation: int
    has_audio: bool
    frame_pts: tuple[int, ...] = field(repr=False)  # sorted presentation timestamps
    time_base: Fraction = field(repr=False)
    start_s: float = field(repr=False)  # the container's start time
    seek_pts: tuple[int, ...] = field(repr=False)  # per frame: where to seek to reach it
    seekable: bool = field(repr=False)  # timestamps known and unique

    def frame_time(self, index: int) -> float:
        """Presentation time of frame `index` in seconds from the start of the file."""
        if self.seekable:
            return float(self.frame_pts[index] * self.time_base) - self.start_s
        return index / self.fps if self.fps > 0 else 0.0

    def frame_at(self, time_s: float) -> int:
        """Index of the frame on screen at `time_s` (the last one starting at or before it)."""
        if self.seekable:
            pts = (time_s + self.start_s) / float(self.time_base)
            index = bisect.bisect_right(self.frame_pts, int(np.floor(pts + 1e-6))) - 1
        else:
            index = int(np.floor(time_s * self.fps))
        return int(min(max(index, 0), self.n_frames - 1))


@dataclass
class FramePair:
    """A frame and the one after it, RGB uint8 H x W x 3 in display orientation."""

    frame: np.ndarray
    next_frame: np.ndarray
    index: int
    time_s: float
    info: VideoInfo


def _open(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise HearflowError(f"{path}: no such file")
    if path.is_dir():
        raise HearflowError(f"{path}: is a folder, not a video file")
    if path.is_file() and path.stat().st_size == 0:
        raise HearflowError(f"{path}: empty file (0 bytes)")
    try:
        # FFmpeg's stream probing would decode the first frame of each stream only to learn
        # what hearflow learns from its own first decoded frame (bench/prepare.py). The
        # option applies to the probing decoders only, not to the streams' own.
        return av.open(str(path), options={"skip_frame": "all"})
    except av.FFmpegError as error:
        raise HearflowError(f"{path}: not a readable video or audio file ({_ffmpeg_message(error)})") from None


def _ffmpeg_message(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _video_stream(container, path):
    """The first video stream, refused when it declares frames over MAX_FRAME_PIXELS; its decoder
    gets the limit too, so a frame that turns out larger is a decoding error, not an allocation."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise HearflowError(f"{path}: no video stream (the file holds {', '.join(kinds)})")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > MAX_FRAME_PIXELS:
        raise HearflowError(f"{path}: the video declares {width} x {height} frames ({width * height / 1e6:.0f} "
                            f"megapixels); hearflow reads frames of up to {MAX_FRAME_PIXELS / 1e6:.1f} megapixels, 8192 x 4320")
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(MAX_FRAME_PIXELS)}
    return stream


KEEP_PACKETS_MAX_BYTES = 256 * 2**20  # files up to this size are demuxed into memory once
MAX_FRAME_PIXELS = 8192 * 4320  # 8K, the largest frame of H.264 / HEVC level 6.2: 106 MB as RGB


class VideoFile:
    """A video file, demuxed once; use as a context manager.

    Opening demuxes every packet of the first video stream (counting the frames and
    noting keyframes, see `VideoInfo`) and of the first audio stream, decoding only
    until the first frame comes out (for the size and the rotation). Files up to
    KEEP_PACKETS_MAX_BYTES keep their packets in memory: `read_frames` then decodes
    from memory (continuing the decoder opening started when the wanted frames are in
    the first group of pictures), and `hearflow.media.audio.read_audio_window`
    takes the audio from memory too, so the file is read exactly once. Larger files
    are read again with one seek per request.

    Raises HearflowError for a missing, empty or unreadable file, or one without a
    decodable video stream. A truncated file is read up to where it breaks.
    """

    def __init__(self, path: str | Path, keep_packets: bool = True) -> None:
        self.path = Path(path)
        self._container = _open(path)
        try:
            self._demux(keep_packets and (not self.path.is_file() or self.path.stat().st_size <= KEEP_PACKETS_MAX_BYTES))
        except BaseException:
            self._container.close()
            raise

    def _demux(self, keep: bool) -> None:
        container, path = self._container, self.path
        stream = _video_stream(container, path)
        self.video_stream = stream
        self.audio_stream = container.streams.audio[0] if container.streams.audio else None
        stream.codec_context.thread_count = 1  # frame threads would apply skip settings late
        self._video_packets = [] if keep else None
        self.audio_packets = [] if keep and self.audio_stream is not None else None
        timestamps: list[int | None] = []
        keyframes: list[tuple[int, int | None, int | None]] = []  # (position, pts, dts), decode order
        self._opening_frames: list = []  # frames the decoder gave while opening
        self._fed = 0  # video packets fed to the decoder while opening
        streams = [s for s in (stream, self.audio_stream) if s is not None]
        try:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue
                if packet.stream is not stream:
                    if self.audio_packets is not None:
                        self.audio_packets.append(packet)
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if packet.is_keyframe:
                    keyframes.append((len(timestamps), ts, packet.dts))
                timestamps.append(ts)
                if self._video_packets is not None:
                    self._video_packets.append(packet)
                if not self._opening_frames:
                    self._opening_frames = _decode_quietly(stream.codec_context, packet)
                    self._fed += 1
        except (av.FFmpegError, EOFError):
            pass  # a truncated or damaged file: keep the packets read before the damage
        if not self._opening_frames:
            self._opening_frames = _decode_quietly(stream.codec_context, None)
            self._fed = -1  # the decoder was drained: it must be reset before reuse
        if not self._opening_frames:
            raise HearflowError(f"{path}: the video stream has no decodable frame")
        self._decoder_fresh = True  # still exactly as opening left it
        self._keyframes = keyframes
        self.info = _video_info(container, stream, path, timestamps, keyframes, self._opening_frames[0])

    def read_frames(self, index: int, count: int) -> list[np.ndarray]:
        """Frames ``index .. index + count - 1`` (RGB uint8 H x W x 3, display orientation)."""
        info = self.info
        _check_range(self.path, info, index, count)
        frames = None
        if info.seekable and self._video_packets is not None:
            frames = self._read_from_memory(index, count)
        elif info.seekable:
            frames = _read_by_timestamp(self.path, info, index, count)
        return frames if frames is not None else _read_by_counting(self.path, info, index, count)

    def _read_from_memory(self, index: int, count: int) -> list[np.ndarray] | None:
        target = self.info.frame_pts[index]
        starts = [position for position, pts, _ in self._keyframes if pts is not None and pts <= target]
        start = starts[-1] if starts else 0
        context = self.video_stream.codec_context
        carried = []
        if self._decoder_fresh and self._fed >= 0 and start <= self._fed:
            carried, start = self._opening_frames, self._fed  # continue where opening stopped
        else:
            context.flush_buffers()
        self._decoder_fresh = False
        packets = itertools.chain(self._video_packets[start:], [None])
        return _collect_frames(packets, context, self.info, index, count, carried, self.path)

    def close(self) -> None:
        self._container.close()
        self._video_packets = self.audio_packets = None

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(path: str | Path) -> VideoInfo:
    """Count the frames of the first video stream and read its size, rate and rotation.

    One demuxing pass over the file; only the first frame is decoded. Raises
    HearflowError for a missing, empty or unreadable file, or one without a
    decodable video stream; a truncated file is probed up to where it breaks.
    """
    with VideoFile(path, keep_packets=False) as video:
        return video.info


def _video_info(container, stream, path, timestamps, keyframes, first_frame) -> VideoInfo:
    time_base = stream.time_base or Fraction(1, 1)
    start_s = container.start_time / av.time_base if container.start_time is not None else 0.0
    declared_duration = container.duration / av.time_base if container.duration else None
    declared_rate = stream.average_rate or stream.guessed_rate
    known = [ts for ts in timestamps if ts is not None]
    seekable = len(known) == len(timestamps) and len(set(known)) == len(known) and len(known) > 0
    frame_pts = tuple(sorted(known)) if seekable else ()
    n_frames = len(timestamps)
    if seekable and n_frames >= 2 and frame_pts[-1] > frame_pts[0]:
        fps = (n_frames - 1) / float((frame_pts[-1] - frame_pts[0]) * time_base)
    else:
        fps = float(declared_rate) if declared_rate else 0.0
    # The duration of the frames actually present (a truncated file declares more).
    duration_s = n_frames / fps if fps > 0 else (declared_duration or 0.0)
    rotation = int(round((first_frame.rotation or 0) / 90.0)) * 90 % 360
    width, height = first_frame.width, first_frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=str(path),
        fps=fps,
        n_frames=n_frames,
        width=width,
        height=height,
        duration_s=float(duration_s),
        rotation=rotation,
        has_audio=bool(container.streams.audio),
        frame_pts=frame_pts,
        time_base=time_base,
        start_s=start_s,
        seek_pts=_seek_points(frame_pts, [(pts, dts) for _, pts, dts in keyframes]) if seekable else (),
        seekable=seekable,
    )


def _decode_quietly(context, packet) -> list:
    try:
        return list(context.decode(packet))
    except av.FFmpegError:
        return []


def _seek_points(frame_pts: tuple[int, ...], keyframes: list[tuple[int | None, int | None]]) -> tuple[int, ...]:
    """For each frame, a timestamp that makes a backward seek land at or before its keyframe.

    The frame's keyframe is the last key packet displayed at or before it (so open
    GOPs decode correctly). Seeking to that packet's dts (never after its pts) lands
    there, or earlier, whether the container indexes by dts or by pts.
    """
    keys = sorted((pts, min(pts, dts) if dts is not None else pts) for pts, dts in keyframes if pts is not None)
    key_pts = [pts for pts, _ in keys]
    points = []
    for pts in frame_pts:
        position = bisect.bisect_right(key_pts, pts) - 1
        points.append(keys[position][1] if position >= 0 else frame_pts[0])
    return tuple(points)


def _to_display(frame, rotation: int) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    if rotation:
        image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
    return image


def _check_range(path, info: VideoInfo, index: int, count: int) -> None:
    if count < 1 or index < 0 or index + count > info.n_frames:
        raise HearflowError(
            f"{path}: frames {index}..{index + count - 1} requested, but the video has {info.n_frames} frames"
        )


def read_frames(path: str | Path, index: int, count: int, info: VideoInfo | None = None) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` (RGB uint8 H x W x 3, display orientation).

    Seeks once to the keyframe before `index` and decodes forward, only what the wanted
    frames need: unwanted frames that no other frame depends on are skipped, and nothing
    after the last wanted frame's packet is decoded. Falls back to
    decoding from the start when the file's timestamps cannot be trusted.
    (`VideoFile.read_frames` does the same without reading the file a second time.)
    """
    info = info or probe(path)
    _check_range(path, info, index, count)
    frames = _read_by_timestamp(path, info, index, count) if info.seekable else None
    return frames if frames is not None else _read_by_counting(path, info, index, count)


def _collect_frames(packets, context, info: VideoInfo, index: int, count: int, carried, path) -> list[np.ndarray] | None:
    """Feed `packets` (None flushes) to `context` and keep frames index..index+count-1 by timestamp.

    Only what the wanted frames need is decoded: every packet that is not wanted is
    given to the decoder with non-reference frames skipped (nothing depends on them),
    and once the last wanted packet is in, the decoder is drained instead of fed
    more. Returns None when the timestamps do not lead to the frames (the caller
    falls back).
    """
    wanted = set(info.frame_pts[index : index + count])
    first_wanted = info.frame_pts[index]
    unfed = set(wanted)  # wanted timestamps whose packet has not reached the decoder yet
    found: dict[int, np.ndarray] = {}

    def take(frames) -> bool | None:
        for frame in frames:
            if frame.pts is None or (frame.pts > first_wanted and first_wanted not in found):
                return None  # no timestamps, or decoding started after the wanted frame
            if frame.pts in wanted:
                found[frame.pts] = _to_display(frame, info.rotation)
        return len(found) == count

    if carried and take(carried) is None:
        return None
    try:
        for packet in packets:
            if len(found) == count:
                break
            ts = None if packet is None or packet.size == 0 else _packet_ts(packet)
            needed = ts is None or ts in wanted
            context.skip_frame = "DEFAULT" if needed else "NONREF"
            if take(context.decode(packet)) is None:
                return None
            if packet is None:
                break
            unfed.discard(ts)
            if not unfed and len(found) < count:  # all wanted packets are in: drain the decoder
                context.skip_frame = "DEFAULT"
                if take(context.decode(None)) is None:
                    return None
                break
    except (av.FFmpegError, EOFError) as error:
        raise HearflowError(f"{path}: decoding failed near frame {index} ({_ffmpeg_message(error)})") from None
    finally:
        context.skip_frame = "DEFAULT"
    if len(found) < count:
        return None  # not all frames came out: let the decode-from-start path decide
    return [found[pts] for pts in sorted(found)]


def _packet_ts(packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


def _read_by_timestamp(path, info: VideoInfo, index: int, count: int) -> list[np.ndarray] | None:
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = 1  # frame threads would apply the skip setting late
        container.seek(info.seek_pts[index], stream=stream, backward=True, any_frame=False)
        return _collect_frames(container.demux(stream), stream.codec_context, info, index, count, [], path)


def _read_by_counting(path, info: VideoInfo, index: int, count: int) -> list[np.ndarray]:
    frames = []
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            for position, frame in enumerate(container.decode(stream)):
                if position >= index:
                    frames.append(_to_display(frame, info.rotation))
                    if len(frames) == count:
                        return frames
        except (av.FFmpegError, EOFError) as error:
            raise HearflowError(f"{path}: decoding failed near frame {index} ({_ffmpeg_message(error)})") from None
    raise HearflowError(f"{path}: frame {index + len(frames)} could not be decoded (damaged or truncated file)")


def key_frame_index(n_frames: int) -> int:
    """The default key frame: the middle one, floor(n / 2), kept before the last frame."""
    return min(n_frames // 2, n_frames - 2)


def read_frame_pair(
    path: str | Path, index: int | None = None, time_s: float | None = None, info: VideoInfo | None = None
) -> FramePair:
    """The frame at `index` (or on screen at `time_s`; default the middle frame) and the next one.

    The last frame has no successor, so an index or time at the very end selects
    the last pair. Raises HearflowError for videos with fewer than two frames.
    """
    if info is None:  # one pass over the file
        with VideoFile(path) as video:
            return _frame_pair(path, video.info, index, time_s, video.read_frames)
    return _frame_pair(path, info, index, time_s, lambda first, count: read_frames(path, first, count, info))


def _frame_pair(path, info: VideoInfo, index, time_s, read) -> FramePair:
    if info.n_frames < 2:
        raise HearflowError(f"{path}: {info.n_frames} frame(s); a frame pair needs at least 2")
    if index is None:
        index = info.frame_at(time_s) if time_s is not None else key_frame_index(info.n_frames)
    if not 0 <= index < info.n_frames:
        raise HearflowError(f"{path}: frame {index} requested, but the video has {info.n_frames} frames")
    index = min(index, info.n_frames - 2)
    frame, next_frame = read(index, 2)
    return FramePair(frame, next_frame, index, info.frame_time(index), info)
