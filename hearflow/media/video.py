"""Frame-exact video access with PyAV: probe, read the key frame and the next one.

Frames are numbered in presentation order from 0. Container-declared frame counts
are often wrong, so `probe` counts the video packets itself (demuxing without
decoding is cheap) and keeps each frame's presentation timestamp; frame ``i`` is the
``i``-th smallest timestamp. `read_frames` then seeks once, to the keyframe at or
before the wanted frame, and decodes forward, matching frames by timestamp, so the
key frame and the next one come out of one decoding pass.

Times (``time_s``) are seconds from the start of the file (the container's start
time), on the same clock as `hearflow.media.audio`, so a frame and its audio line up.
Frames come out in display orientation: the display-matrix rotation of phone
videos is applied (flips in the matrix are not).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

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
        return av.open(str(path))
    except av.FFmpegError as error:
        raise HearflowError(f"{path}: not a readable video or audio file ({_ffmpeg_message(error)})") from None


def _ffmpeg_message(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _video_stream(container, path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise HearflowError(f"{path}: no video stream (the file holds {', '.join(kinds)})")
    return container.streams.video[0]


def probe(path: str | Path) -> VideoInfo:
    """Count the frames of the first video stream and read its size, rate and rotation.

    One demuxing pass over the file; only the first frame is decoded (for the size
    and the rotation). A truncated file is probed up to where it breaks.
    Raises HearflowError for a missing, empty or unreadable file, or one without a
    decodable video stream.
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = 1
        timestamps: list[int | None] = []
        keyframes: list[tuple[int | None, int | None]] = []  # (pts, dts) of key packets, decode order
        first_frame = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                timestamps.append(ts)
                if packet.is_keyframe:
                    keyframes.append((ts, packet.dts))
                if first_frame is None:
                    first_frame = _first_decoded(stream, packet)
            if first_frame is None:
                first_frame = _first_decoded(stream, None)
        except (av.FFmpegError, EOFError):
            pass  # a truncated or damaged file: keep the packets read before the damage
        if first_frame is None:
            raise HearflowError(f"{path}: the video stream has no decodable frame")
        time_base = stream.time_base or Fraction(1, 1)
        start_s = container.start_time / av.time_base if container.start_time is not None else 0.0
        declared_duration = container.duration / av.time_base if container.duration else None
        has_audio = bool(container.streams.audio)
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
        has_audio=has_audio,
        frame_pts=frame_pts,
        time_base=time_base,
        start_s=start_s,
        seek_pts=_seek_points(frame_pts, keyframes) if seekable else (),
        seekable=seekable,
    )


def _first_decoded(stream, packet):
    try:
        frames = stream.decode(packet)
    except av.FFmpegError:
        return None
    return frames[0] if frames else None


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


def read_frames(path: str | Path, index: int, count: int, info: VideoInfo | None = None) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` (RGB uint8 H x W x 3, display orientation).

    Seeks once to the keyframe before `index` and decodes forward; frames before
    `index` that no other frame depends on are skipped by the decoder. Falls back to
    decoding from the start when the file's timestamps cannot be trusted.
    """
    info = info or probe(path)
    if count < 1 or index < 0 or index + count > info.n_frames:
        raise HearflowError(
            f"{path}: frames {index}..{index + count - 1} requested, but the video has {info.n_frames} frames"
        )
    if info.seekable:
        frames = _read_by_timestamp(path, info, index, count)
        if frames is not None:
            return frames
    return _read_by_counting(path, info, index, count)


def _read_by_timestamp(path, info: VideoInfo, index: int, count: int) -> list[np.ndarray] | None:
    wanted = {pts: i for i, pts in enumerate(info.frame_pts[index : index + count])}
    first_wanted = info.frame_pts[index]
    found: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        context.thread_count = 1  # frame threads would apply the skip setting late
        context.skip_frame = "NONREF"  # frames nothing depends on are not needed before the target
        container.seek(info.seek_pts[index], stream=stream, backward=True, any_frame=False)
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if context.skip_frame != "DEFAULT" and (packet.size == 0 or (ts is not None and ts >= first_wanted)):
                    context.skip_frame = "DEFAULT"
                for frame in stream.decode(packet):
                    if frame.pts is None:
                        return None
                    if frame.pts > first_wanted and first_wanted not in found:
                        return None  # the seek landed after the wanted frame
                    if frame.pts in wanted:
                        found[frame.pts] = _to_display(frame, info.rotation)
                        if len(found) == count:
                            return [found[pts] for pts in sorted(found)]
        except (av.FFmpegError, EOFError) as error:
            raise HearflowError(f"{path}: decoding failed near frame {index} ({_ffmpeg_message(error)})") from None
    return None  # not all frames came out: let the decode-from-start path decide


def _read_by_counting(path, info: VideoInfo, index: int, count: int) -> list[np.ndarray]:
    frames = []
    with _open(path) as container:
        stream = container.streams.video[0]
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
    info = info or probe(path)
    if info.n_frames < 2:
        raise HearflowError(f"{path}: {info.n_frames} frame(s); a frame pair needs at least 2")
    if index is None:
        index = info.frame_at(time_s) if time_s is not None else key_frame_index(info.n_frames)
    if not 0 <= index < info.n_frames:
        raise HearflowError(f"{path}: frame {index} requested, but the video has {info.n_frames} frames")
    index = min(index, info.n_frames - 2)
    frame, next_frame = read_frames(path, index, 2, info)
    return FramePair(frame, next_frame, index, info.frame_time(index), info)


def iter_frame_pairs(path: str | Path, every_s: float | None = None) -> Iterator[FramePair]:
    """Stream (frame i, frame i + 1) pairs through the whole video in one decoding pass.

    With `every_s`, yields only the first frame at or after each multiple of
    `every_s` seconds; otherwise every frame that has a successor.
    """
    info = probe(path)
    next_time = 0.0
    previous = None  # (index, time_s, image) of a selected frame waiting for its successor
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for position, frame in enumerate(container.decode(stream)):
                image = _to_display(frame, info.rotation)
                if previous is not None:
                    yield FramePair(previous[2], image, previous[0], previous[1], info)
                    previous = None
                time_s = float(frame.time) - info.start_s if frame.time is not None else info.frame_time(position)
                if every_s is None or time_s >= next_time - 1e-9:
                    previous = (position, time_s, image)
                    if every_s is not None:
                        next_time = (np.floor(time_s / every_s + 1e-9) + 1) * every_s
        except (av.FFmpegError, EOFError) as error:
            raise HearflowError(f"{path}: decoding failed ({_ffmpeg_message(error)})") from None
