"""Every (frame, next frame) pair of a video in one decoding pass: what `hearflow localize`
streams. Frames are numbered, timed and oriented as `hearflow.media.video` reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from hearflow.errors import HearflowError
from hearflow.media.video import FramePair, _ffmpeg_message, _open, _to_display, _video_stream, probe


def iter_frame_pairs(path: str | Path, every_s: float | None = None) -> Iterator[FramePair]:
    """Stream (frame i, frame i + 1) pairs through the whole video in one decoding pass.

    With `every_s`, yields only the first frame at or after each multiple of
    `every_s` seconds; otherwise every frame that has a successor.
    """
    info = probe(path)
    next_time = 0.0
    previous = None  # (index, time_s, image) of a selected frame waiting for its successor
    with _open(path) as container:
        stream = _video_stream(container, path)
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
