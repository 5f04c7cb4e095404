"""Write MP4 files (H.264 video + AAC audio) that common players open.

Frames are streamed one at a time into `VideoWriter` (or `write_video`, which wraps
it), so a video of any length is written in constant memory. Audio, when given,
is a whole array muxed beside the frames as they arrive; `mux_audio` instead puts
another file's audio track beside an already written video, streaming both. A file
appears under its final name only once it is complete (temporary name + `os.replace`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import cv2
import numpy as np

from hearflow.errors import HearflowError
from hearflow.io import PendingFile, atomic_path

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
        self._pending = PendingFile(self.path)
        self._container = None
        self._video = None
        self._audio_track: _AacTrack | None = None

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
        _mux(self._container, self._video.encode(video_frame))
        self.frames_written += 1
        if self._audio_track is not None:  # keep the audio level with the video, for interleaving
            level = math.ceil(self.frames_written / self.fps * self.sample_rate)
            self._audio_track.add(self.audio[self._audio_track.samples : level])

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to `path`."""
        if self._container is None:
            raise HearflowError(f"{self.path}: no frames were written")
        try:
            _mux(self._container, self._video.encode(None))
            if self._audio_track is not None:
                self._audio_track.add(self.audio[self._audio_track.samples :])
                self._audio_track.finish()
            self._container.close()
            self._container = None
            self._pending.commit()
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
        self._pending.discard()

    def _open(self, shape: tuple[int, ...]) -> None:
        height, width = shape[0], shape[1]
        self._frame_shape = shape
        self.size = (width + width % 2, height + height % 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(
                str(self._pending.tmp), "w", format="mp4", container_options={"movflags": "+faststart"}
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
                self._audio_track = _AacTrack(self._container, self.sample_rate, self.audio.shape[1])
        except (av.FFmpegError, OSError) as error:
            self.abort()
            raise HearflowError(f"cannot write video {self.path}: {error}") from error


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


def mux_audio(video_path: str | Path, audio_source: str | Path, out_path: str | Path, start_s: float = 0.0) -> Path:
    """Write `out_path` (MP4): the video stream of `video_path` as it is (not re-encoded)
    beside the first audio track of `audio_source` from its time `start_s` (seconds) on,
    cut at the video's end, so that sound and picture stay in step.

    An AAC track is copied packet for packet (to within one 1024-sample packet of
    `start_s`); any other is re-encoded as AAC at its rate (rounded up to one AAC
    takes), mono or stereo (more channels are mixed down), with silence where it starts
    after `start_s`.
    """
    video_path, audio_source, out_path = Path(video_path), Path(audio_source), Path(out_path)
    try:
        with atomic_path(out_path) as temporary, av.open(str(video_path)) as video_in, \
                av.open(str(audio_source)) as audio_in:
            if not video_in.streams.video:
                raise HearflowError(f"{video_path} has no video stream")
            if not audio_in.streams.audio:
                raise HearflowError(f"{audio_source} has no audio track")
            video_stream, audio_stream = video_in.streams.video[0], audio_in.streams.audio[0]
            end_s = _duration_s(video_stream, video_in)
            with av.open(
                str(temporary), "w", format="mp4", container_options={"movflags": "+faststart"}
            ) as output:
                video_out = output.add_stream_from_template(video_stream)
                if audio_stream.codec_context.name == "aac":
                    audio_out = output.add_stream_from_template(audio_stream)
                    audio = _copied_audio(audio_in, audio_stream, audio_out, output, start_s, end_s)
                else:
                    rate, channels = aac_sample_rate(audio_stream.rate), min(max(audio_stream.channels, 1), 2)
                    track = _AacTrack(output, rate, channels)
                    audio = _encoded_audio(audio_in, audio_stream, track, start_s, end_s)
                reached_s = 0.0
                for packet in video_in.demux(video_stream):
                    if packet.dts is None:
                        continue
                    while reached_s < float(packet.dts * packet.time_base) + 0.5:  # interleave, 0.5 s ahead
                        reached_s = next(audio, math.inf)
                    packet.stream = video_out
                    output.mux(packet)
                for _ in audio:  # the rest, up to the video's end
                    pass
    except av.FFmpegError as error:
        raise HearflowError(f"cannot put the audio of {audio_source} beside {video_path}: {error}") from error
    return out_path


def _copied_audio(container, stream, stream_out, output, start_s: float, end_s: float):
    """Mux the packets of `stream` from `start_s` to `start_s + end_s`, shifted to start at 0;
    yields the output time (seconds) reached after each."""
    offset = round(start_s / stream.time_base)
    end = offset + round(end_s / stream.time_base)
    for packet in container.demux(stream):
        if packet.dts is None or packet.pts is None:
            continue
        if packet.pts + (packet.duration or 0) < offset:  # ends before the start; the encoder-delay
            continue  # packet that ends exactly at 0 stays, as decoders expect it
        if packet.pts >= end:
            break
        packet.pts -= offset
        packet.dts -= offset
        packet.stream = stream_out
        output.mux(packet)
        yield float(packet.pts * stream.time_base)


def _encoded_audio(container, stream, track: "_AacTrack", start_s: float, end_s: float):
    """Encode `stream` from `start_s` into `track` until `end_s` seconds of output;
    yields the output time (seconds) reached after each chunk."""
    total = round(end_s * track.sample_rate)
    for chunk in _audio_chunks(container, stream, track.sample_rate, track.channels, start_s):
        track.add(chunk[: total - track.samples])
        yield track.samples / track.sample_rate
        if track.samples >= total:
            break
    track.finish()


class _AacTrack:
    """An AAC stream of an output container fed with float32 n x channels arrays; encodes
    whole 1024-sample frames as samples arrive and the short remainder at `finish`."""

    def __init__(self, container, sample_rate: int, channels: int) -> None:
        self.container = container
        self.channels = channels
        self.layout = AUDIO_LAYOUTS[channels]
        self.sample_rate = sample_rate
        self.stream = container.add_stream("aac", rate=sample_rate, options={"aac_coder": "fast"})
        self.stream.layout = self.layout
        self.samples = 0  # samples handed to add() so far
        self._pending = np.zeros((0, channels), dtype=np.float32)
        self._encoded = 0

    def add(self, samples: np.ndarray) -> None:
        self.samples += len(samples)
        self._pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(self._pending) - len(self._pending) % AAC_FRAME_SAMPLES
        for start in range(0, whole, AAC_FRAME_SAMPLES):
            self._encode(self._pending[start : start + AAC_FRAME_SAMPLES])
        self._pending = self._pending[whole:]

    def finish(self) -> None:
        if len(self._pending):
            self._encode(self._pending)
        _mux(self.container, self.stream.encode(None))

    def _encode(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp", layout=self.layout
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._encoded
        self._encoded += len(samples)
        _mux(self.container, self.stream.encode(frame))


def _audio_chunks(container, stream, rate: int, channels: int, start_s: float):
    """Float32 n x channels arrays of `stream` at `rate` Hz, from time `start_s` on
    (silence first where the stream starts later)."""
    resampler = av.AudioResampler(format="flt", layout=AUDIO_LAYOUTS[channels], rate=rate)
    to_skip = None
    for frame in container.decode(stream):
        if to_skip is None:
            first_s = float(frame.time) if frame.time is not None else 0.0
            to_skip = round((start_s - first_s) * rate)
            if to_skip < 0:
                yield np.zeros((-to_skip, channels), dtype=np.float32)
                to_skip = 0
        for resampled in resampler.resample(frame):
            samples = resampled.to_ndarray().reshape(-1, channels)
            if to_skip:
                dropped = min(to_skip, len(samples))
                samples, to_skip = samples[dropped:], to_skip - dropped
            if len(samples):
                yield samples
    for resampled in resampler.resample(None):
        samples = resampled.to_ndarray().reshape(-1, channels)[to_skip or 0 :]
        to_skip = 0
        if len(samples):
            yield samples


def _duration_s(stream, container) -> float:
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base


def _mux(container, packets) -> None:
    for packet in packets:
        container.mux(packet)


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
