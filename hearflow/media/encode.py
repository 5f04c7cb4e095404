"""Write MP4 files (H.264 video + AAC audio) that common players open.

Frames are streamed one at a time into `VideoWriter` (or `write_video`, which wraps
it), so a video of any length is written in constant memory. Audio, when given,
is a whole array muxed beside the frames as they arrive. The file appears under
its final name only once it is complete (temporary name + `os.replace`).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import cv2
import numpy as np

from hearflow.errors import HearflowError

AAC_FRAME_SAMPLES = 1024  # samples per channel in one AAC-LC frame
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def aac_sample_rate(sample_rate: int) -> int:
    """The smallest rate the AAC encoder takes that is at least `sample_rate` (96 kHz at most)."""
    for rate in AAC_SAMPLE_RATES:
        if rate >= sample_rate:
            return rate
    return AAC_SAMPLE_RATES[-1]


class VideoWriter:
    """Stream RGB frames into an MP4 file (H.264 yuv420p, optional AAC audio).

    Use as a context manager; `write(frame)` takes one RGB uint8 H x W x 3 array.
    The size comes from the first frame; an odd width or height is padded by one
    replicated pixel column/row, because yuv420p needs even sizes (`size` gives the
    encoded width and height). `audio` is float32 samples, shape (n,) or
    (n, channels), in [-1, 1] (clipped); a rate the AAC encoder does not take is
    resampled up to the nearest one it does. Leaving the block with an exception
    deletes the partial file and leaves any existing file at `path` untouched.

    `crf` is x264's quality (lower = better, 0-51), `preset` its speed. `threads` = 0
    lets x264 choose. Repeatable files (the same frames give the same bytes on every
    run and machine) need `threads=1` and a preset without x264's lookahead
    (`ultrafast`, `superfast`): measured, `veryfast` on frames of 64-320 px gave a few
    different (equally valid) encodings per hundred runs.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.fps = _frame_rate(fps, self.path)
        if not 0 <= crf <= 51:
            raise HearflowError(f"{self.path}: crf must be in 0..51, got {crf}")
        self.crf, self.preset, self.threads = int(crf), str(preset), int(threads)
        self.audio, self.sample_rate = _prepare_audio(audio, sample_rate, self.path)
        self.size: tuple[int, int] | None = None  # encoded (width, height), known after the first frame
        self.frames_written = 0
        self._frame_shape: tuple[int, ...] | None = None
        self._audio_written = 0
        self._tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._container = None
        self._video = None
        self._audio_stream = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 H x W x 3 frame (every frame must have the first one's size)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise HearflowError(
                f"{self.path}: frames must be RGB uint8 H x W x 3, got {frame.dtype} {frame.shape}"
            )
        if self._container is None:
            self._open(frame.shape)
        elif frame.shape != self._frame_shape:
            raise HearflowError(
                f"{self.path}: frame {self.frames_written} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the first frame was {self._frame_shape[1]}x{self._frame_shape[0]}"
            )
        pad_rows, pad_cols = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_rows or pad_cols:
            frame = np.pad(frame, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
        # RGB -> yuv420p with OpenCV (BT.601, limited range, as tagged in _open): a known
        # conversion, and a little faster than letting the stream reformat each frame.
        yuv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420)
        video_frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        video_frame.pts = self.frames_written
        self._mux(self._video.encode(video_frame))
        self.frames_written += 1
        if self.audio is not None:
            self._write_audio_until(math.ceil(self.frames_written / self.fps * self.sample_rate))

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to `path`."""
        if self._container is None:
            raise HearflowError(f"{self.path}: no frames were written")
        try:
            self._mux(self._video.encode(None))
            if self.audio is not None:
                self._write_audio_until(len(self.audio))
                self._mux(self._audio_stream.encode(None))
            self._container.close()
            self._container = None
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop writing and delete the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass
            self._container = None
        self._tmp_path.unlink(missing_ok=True)

    def _open(self, shape: tuple[int, ...]) -> None:
        height, width = shape[0], shape[1]
        self._frame_shape = shape
        self.size = (width + width % 2, height + height % 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(
                str(self._tmp_path), "w", format="mp4", container_options={"movflags": "+faststart"}
            )
            self._video = self._container.add_stream(
                "libx264", rate=self.fps, options={"crf": str(self.crf), "preset": self.preset}
            )
            self._video.width, self._video.height = self.size
            self._video.pix_fmt = "yuv420p"
            context = self._video.codec_context
            context.thread_count = self.threads
            # BT.601 limited range (what write() converts to), tagged so players do not guess
            context.color_range, context.colorspace = 1, 6  # MPEG range, SMPTE 170M matrix
            context.color_primaries, context.color_trc = 6, 6  # SMPTE 170M
            if self.audio is not None:
                self._audio_stream = self._container.add_stream(
                    "aac", rate=self.sample_rate, options={"aac_coder": "fast"}
                )
                self._audio_stream.layout = AUDIO_LAYOUTS[self.audio.shape[1]]
        except (av.FFmpegError, OSError) as error:
            self.abort()
            raise HearflowError(f"cannot write video {self.path}: {error}") from error

    def _write_audio_until(self, end: int) -> None:
        """Encode whole AAC frames of audio up to sample `end` (the last frame may be short)."""
        end = min(end, len(self.audio))
        while self._audio_written < end:
            start = self._audio_written
            stop = min(start + AAC_FRAME_SAMPLES, len(self.audio))
            if stop - start < AAC_FRAME_SAMPLES and stop < len(self.audio):
                break
            planar = np.ascontiguousarray(self.audio[start:stop].T)
            frame = av.AudioFrame.from_ndarray(
                planar, format="fltp", layout=AUDIO_LAYOUTS[self.audio.shape[1]]
            )
            frame.sample_rate = self.sample_rate
            frame.pts = start
            self._mux(self._audio_stream.encode(frame))
            self._audio_written = stop

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 20,
    preset: str = "veryfast",
    threads: int = 0,
) -> Path:
    """Write `frames` (iterable of RGB uint8 H x W x 3, streamed) and optional `audio`
    (float32 (n,) or (n, channels) at `sample_rate` Hz) as an H.264 + AAC MP4 at `path`.

    Returns the path. See `VideoWriter` for sizes, audio rates and the options.
    """
    with VideoWriter(path, fps, audio, sample_rate, crf=crf, preset=preset, threads=threads) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def _frame_rate(fps: float | Fraction, path: Path) -> Fraction:
    try:
        rate = Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError) as error:
        raise HearflowError(f"{path}: fps must be a number, got {fps!r}") from error
    if not 0 < rate <= 1000:
        raise HearflowError(f"{path}: fps must be in (0, 1000], got {fps}")
    return rate


def _prepare_audio(
    audio: np.ndarray | None, sample_rate: int | None, path: Path
) -> tuple[np.ndarray | None, int | None]:
    """Samples as float32 n x channels in [-1, 1] at a rate AAC takes, and that rate."""
    if audio is None:
        return None, None
    if not sample_rate or sample_rate <= 0:
        raise HearflowError(f"{path}: audio was given without a positive sample_rate")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[1] not in AUDIO_LAYOUTS or len(audio) == 0:
        raise HearflowError(
            f"{path}: audio must be a non-empty array of shape (n,) or (n, channels) with 1-8 "
            f"channels, got {audio.shape}"
        )
    rate = aac_sample_rate(int(sample_rate))
    if rate != sample_rate:
        from scipy.signal import resample_poly  # imported here: scipy.signal takes a second to import

        divisor = math.gcd(rate, int(sample_rate))
        audio = resample_poly(audio, rate // divisor, int(sample_rate) // divisor, axis=0)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), rate
