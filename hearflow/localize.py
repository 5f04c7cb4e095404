"""`hearflow localize`: where in a video does the sound come from, step by step.

A *step* is one frame of the video: the model sees that frame, the optical flow
from it to the next frame, and ``data.seconds`` (3 s) of audio centred on the
frame's timestamp, and returns a similarity map (``h x w`` cosines). From that map:

- ``heatmap``: the map upsampled to the video's display size with bicubic
  interpolation (OpenCV ``INTER_CUBIC``, as the benchmark metric does) and min-max
  normalised to [0, 1] (all zeros when the map is flat);
- ``peak_xy``: the heatmap's highest pixel (x, y);
- ``box``: ``(x0, y0, x1, y1)``, the bounding box of the connected region of
  heatmap pixels >= ``BOX_THRESHOLD`` (0.5, i.e. at least halfway between the
  map's lowest and highest value) that contains the peak; pixel edges, so it covers
  the pixels ``x0 <= x < x1``, ``y0 <= y < y1``;
- ``confidence``: the highest value of the raw similarity map (a cosine, the same
  per-sample confidence the AP / max-F1 metrics use).

Pixel coordinates are in the video's display orientation (rotated phone videos
come out upright). Inputs are made by the one preprocessing path of training and
evaluation: `hearflow.media.flow.aggregate_flow` at ``data.flow_size`` with
``data.flow_method`` (what `hearflow prepare` stores), then
`hearflow.data.transforms.image_flow_tensors` (test transform) and `spectrogram`.

Videos are streamed: a background thread decodes the frames once, in order, and
makes the steps' inputs (with ``input_threads`` threads side by side: all cores but
one when the model runs on a GPU, where the inputs are the whole cost) while the
model runs on the previous batch; overlay frames
wait in a bounded buffer only until their step's map is known and then go straight
to the encoder; the JSON is written as steps arrive; each audio window is read with
one seek. Memory does not grow with the video's length.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue

import cv2
import numpy as np
import torch
from tqdm import tqdm

from hearflow.data.dataset import fit_audio
from hearflow.data.transforms import audio_window_length, image_flow_tensors, spectrogram
from hearflow.distributed import resolve_device
from hearflow.errors import HearflowError
from hearflow.media.audio import read_audio_window
from hearflow.media.encode import VideoWriter, mux_audio
from hearflow.media.flow import aggregate_flow, pair_window, resize_frame
from hearflow.media.video import VideoFile, iter_frame_pairs, key_frame_index
from hearflow.overlay import draw_box, draw_marker, overlay_heatmap, upsample_heatmap

DEFAULT_BATCH_SIZE = 16  # steps per forward pass
BOX_THRESHOLD = 0.5  # heatmap level (after min-max normalisation) that bounds the box
# Overlay frames wait for their step's map in a buffer of at most 2 x batch_size frames
# and at most this many bytes (fewer, smaller batches when frames are huge or steps sparse).
FRAME_BUFFER_BYTES = 256 * 2**20


@dataclass
class LocalizationStep:
    """The model's answer for one frame. Coordinates are video pixels, display orientation.

    time_s: the frame's timestamp (seconds from the start of the file); frame: its
    index (0-based, presentation order); both None for `Localizer.localize_arrays`.
    similarity: float32 h x w raw cosine map; heatmap: float32 H x W in [0, 1] at the
    frame's size; peak_xy: (x, y); box: (x0, y0, x1, y1) pixel edges; confidence:
    the peak of ``similarity``. See the module docstring for the exact rules.
    """

    time_s: float | None
    frame: int | None
    similarity: np.ndarray
    heatmap: np.ndarray
    peak_xy: tuple[int, int]
    box: tuple[int, int, int, int]
    confidence: float

    def to_dict(self) -> dict:
        """The step as written in ``{stem}.json``: time_s, frame, peak_xy, box, confidence."""
        return {
            "time_s": None if self.time_s is None else round(float(self.time_s), 6),
            "frame": self.frame,
            "peak_xy": [int(v) for v in self.peak_xy],
            "box": [int(v) for v in self.box],
            "confidence": round(float(self.confidence), 6),
        }


def peak_and_box(heatmap: np.ndarray, threshold: float = BOX_THRESHOLD) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The heatmap's highest pixel (x, y) (first in raster order on ties) and the box
    ``(x0, y0, x1, y1)`` (pixel edges) of the 8-connected region of pixels >= threshold holding it
    (the whole frame for an all-zero heatmap)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    mask = (heatmap >= min(threshold, float(heatmap[y, x]))).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    left, top, width, height = (int(v) for v in stats[labels[y, x], :4])
    return (int(x), int(y)), (left, top, left + width, top + height)


def make_step(similarity: np.ndarray, width: int, height: int, time_s: float | None, frame: int | None) -> LocalizationStep:
    """A `LocalizationStep` from one h x w similarity map, for a frame of ``width x height`` pixels."""
    heatmap = upsample_heatmap(similarity, width, height)
    peak_xy, box = peak_and_box(heatmap)
    return LocalizationStep(time_s, frame, similarity, heatmap, peak_xy, box, float(np.max(similarity)))


def check_step_options(every: float | None, key_frame_only: bool) -> None:
    """HearflowError unless the step options make sense: `every` > 0, not with `key_frame_only`."""
    if every is not None and key_frame_only:
        raise HearflowError("choose either every=SECONDS (--every) or key_frame_only (--key-frame), not both")
    if every is not None and not every > 0:
        raise HearflowError(f"--every must be a positive number of seconds, got {every}")


class Localizer:
    """Heatmaps of the sound source for videos or in-memory frames, from one model.

    model: an HTF model (``hearflow.load(...)`` or ``hearflow.build_model(...)``);
    device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; batch_size: steps
    per forward pass; flow_fusion: when given, sets ``model.config.model.flow_fusion``
    (late fusion: maps scaled by 1 + alpha * flow magnitude); checkpoint: the file the
    model came from, recorded in the JSON output (`from_checkpoint` sets it);
    input_threads: threads that make the model inputs of a video's steps (flow,
    resizes, spectrogram) side by side; None = one per CPU core but one when the model
    runs on a GPU (the inputs are then the whole cost), one when it runs on the CPU
    (whose cores the model needs). The results do not depend on it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        flow_fusion: float | None = None,
        checkpoint: str | None = None,
        input_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise HearflowError(f"batch size must be at least 1, got {batch_size}")
        if input_threads is not None and input_threads < 1:
            raise HearflowError(f"input threads must be at least 1, got {input_threads}")
        if flow_fusion is not None:
            if not flow_fusion >= 0:
                raise HearflowError(f"--flow-fusion must be a non-negative weight, got {flow_fusion}")
            model.config.model.flow_fusion = float(flow_fusion)
        self.device = resolve_device(device)
        if input_threads is None:
            input_threads = max(1, (os.cpu_count() or 1) - 1) if self.device.type == "cuda" else 1
        self.input_threads = int(input_threads)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.batch_size = int(batch_size)
        self.checkpoint = checkpoint
        model_config = self.config.model
        self.uses_flow = model_config.prior != "none" or model_config.flow_fusion > 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", **options) -> "Localizer":
        """A Localizer for a hearflow or released checkpoint (see `hearflow.load`)."""
        from hearflow.checkpoint import load

        return cls(load(path, map_location="cpu"), device=device, checkpoint=str(path), **options)

    # --- the model on prepared inputs -------------------------------------------------

    def inputs(self, frames: Sequence[np.ndarray], key: int, audio: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Model inputs for one step: (image 3xSxS, flow 2xSxS, spectrogram 1xFxT) tensors.

        frames: consecutive RGB uint8 frames whose pairs' flows are averaged (two for
        the paper's single pair); key: the index in `frames` of the step's frame;
        audio: mono float32 window of ``audio_window_length`` samples at ``data.sample_rate``.
        """
        data = self.config.data
        if self.uses_flow:
            frame, flow = aggregate_flow(list(frames), data.flow_method, data.flow_size or None, key)
        else:
            frame = resize_frame(frames[key], data.flow_size or None)
            flow = np.zeros(frame.shape[:2] + (2,), np.float32)
        image, flow_tensor = image_flow_tensors(frame, flow, data, train=False, rng=None)
        spec = torch.from_numpy(np.ascontiguousarray(spectrogram(audio, data)))
        return image, flow_tensor, spec

    @torch.no_grad()
    def similarity(self, batch: Sequence[tuple[torch.Tensor, ...]]) -> np.ndarray:
        """Own-pair similarity maps (float32 N x h x w) for a list of `inputs` results."""
        images, flows, specs = (torch.stack(column).to(self.device) for column in zip(*batch))
        output = self.model(images, flows if self.uses_flow else None, specs)
        return output.similarity.float().cpu().numpy()

    # --- public entry points ------------------------------------------------------------

    def localize_arrays(
        self, frame: np.ndarray, next_frame: np.ndarray, audio: np.ndarray, sample_rate: int
    ) -> LocalizationStep:
        """Localize in memory: two consecutive RGB uint8 frames (H x W x 3) and mono float32
        audio (n,) at `sample_rate` Hz, ideally ``data.seconds`` centred on the frame.

        The audio is resampled to ``data.sample_rate`` and centre-cropped (or tiled when
        shorter) to the model's window. Returns a step with time_s and frame None.
        """
        frame, next_frame = np.asarray(frame), np.asarray(next_frame)
        for name, image in (("frame", frame), ("next_frame", next_frame)):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise HearflowError(f"{name} must be RGB uint8 H x W x 3, got {image.dtype} {image.shape}")
        if frame.shape != next_frame.shape:
            raise HearflowError(f"frame {frame.shape} and next_frame {next_frame.shape} differ in size")
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise HearflowError(f"audio must be mono, shape (n,), got {audio.shape}")
        window = fit_audio(audio, int(sample_rate), self.config.data)
        similarity = self.similarity([self.inputs([frame, next_frame], 0, window)])[0]
        return make_step(similarity, frame.shape[1], frame.shape[0], None, None)

    def localize(
        self,
        video_path: str | Path,
        every: float | None = None,
        key_frame_only: bool = False,
        allow_silent: bool = False,
    ) -> Iterator[LocalizationStep]:
        """Steps through a video, in time order, one at a time (a generator).

        every: None = every frame (but the last, which has no next frame); else one
        step at the first frame at or after each multiple of `every` seconds.
        key_frame_only: a single step at the benchmark's key frame (the middle frame).
        allow_silent: a video without an audio track is localized with silence
        instead of raising HearflowError.
        Each yielded step holds a full-size heatmap: iterate rather than keeping them all.
        """
        with self.open(video_path, every, key_frame_only, allow_silent) as video:
            if not video.info.has_audio:
                warnings.warn(f"{video_path}: no audio track; localizing with silence", stacklevel=2)
            for kind, *payload in _VideoRun(self, video, every, key_frame_only, keep_frames=False):
                if kind == "step":
                    yield payload[0]

    def open(self, video_path: str | Path, every: float | None, key_frame_only: bool, allow_silent: bool) -> VideoFile:
        """Open a video (`VideoFile`: counted frames, rotation, audio track) and check the options.

        HearflowError when it cannot be localized; the caller closes the file.
        """
        check_step_options(every, key_frame_only)
        video = VideoFile(video_path, keep_packets=False)  # audio windows seek: memory stays flat
        info = video.info
        problem = None
        if info.n_frames < 2:
            problem = f"{info.n_frames} frame(s); localizing needs at least 2 (frame + next)"
        elif not info.has_audio and not allow_silent:
            problem = "no audio track, so there is no sound to localize (--allow-silent localizes with silence)"
        if problem:
            video.close()
            raise HearflowError(f"{video_path}: {problem}")
        return video

    def audio_window(self, video: VideoFile, time_s: float) -> np.ndarray:
        """The model's audio window centred on `time_s` (silence when the video has no audio)."""
        data = self.config.data
        if not video.info.has_audio:
            return np.zeros(audio_window_length(data), np.float32)
        return read_audio_window(video, time_s, data.seconds, data.sample_rate)


class _VideoRun:
    """One streaming pass over a video; iterating yields, in order,
    ``("step", LocalizationStep)`` and, with keep_frames, ``("frame", index, frame, step)``
    for every frame, ``step`` being the latest step at or before it (the first step
    for frames before it): the heatmap is held between steps.

    A background thread decodes frames, picks the steps and makes their model inputs
    (flow, audio window, spectrogram) while this thread runs the model, the heatmaps
    and whatever consumes the frames (the overlay encoder): the two halves overlap.
    They meet in `_chunks`: the inputs of a batch of steps plus the frames that need
    no later step; at most one chunk waits between them, so memory stays bounded.
    """

    def __init__(self, localizer: Localizer, video: VideoFile, every, key_frame_only, keep_frames, progress=None):
        self.localizer = localizer
        self.video = video
        self.info = info = video.info
        self.every = every
        self.key_frame_only = key_frame_only
        self.keep_frames = keep_frames
        self.progress = progress
        self.pairs = localizer.config.data.flow_pairs if localizer.uses_flow else 1
        budget = FRAME_BUFFER_BYTES // max(info.width * info.height * 3, 1)
        self.held_limit = max(self.pairs + 2, min(2 * localizer.batch_size, budget))
        self.pool: ThreadPoolExecutor | None = None  # input threads, while iterating

    def __iter__(self):
        threads = self.localizer.input_threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="hearflow-inputs") if threads > 1 else None
        try:
            yield from self._run()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def _run(self):
        chunks = self._key_frame_chunks() if self.key_frame_only else self._chunks()
        current = None  # the latest computed step
        early = []  # frames before the first step, shown with the first step's heatmap
        for prepared, frames in _in_background(chunks):
            steps = self._steps(prepared) if prepared else []
            for step in steps:
                yield ("step", step)
            if current is None and steps:
                current = steps[0]
                for index, frame in early:
                    yield ("frame", index, frame, current)
                early.clear()
            upcoming = deque(steps)
            for index, frame in frames:
                while upcoming and upcoming[0].frame <= index:
                    current = upcoming.popleft()
                if current is None:
                    early.append((index, frame))
                else:
                    yield ("frame", index, frame, current)
            if upcoming:
                current = upcoming[-1]
        if early:
            raise HearflowError(f"{self.info.path}: no frame could be localized")

    def _key_frame_chunks(self):
        """The key frame's inputs, then (with keep_frames) every frame."""
        info = self.info
        key = key_frame_index(info.n_frames)
        first = pair_window(key, self.pairs, info.n_frames)
        frames = self.video.read_frames(first, self.pairs + 1)
        yield [self._inputs(key, info.frame_time(key), frames, key - first)], []
        if self.keep_frames:
            chunk = []
            for index, _, frame in self._frames():
                chunk.append((index, frame))
                if len(chunk) >= self.held_limit:
                    yield [], chunk
                    chunk = []
            yield [], chunk

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index, time_s, frame) for every frame in one decoding pass."""
        last = None
        for pair in iter_frame_pairs(self.info.path):
            yield pair.index, pair.time_s, pair.frame
            if self.progress is not None:
                self.progress.update(1)
            last = pair
        if last is not None:
            index = last.index + 1
            time_s = self.info.frame_time(index) if index < self.info.n_frames else last.time_s
            yield index, time_s, last.next_frame
            if self.progress is not None:
                self.progress.update(1)

    def _chunks(self):
        """(step inputs, frames) chunks: each frame comes after the inputs of every step at or before it."""
        pairs, n_frames = self.pairs, self.info.n_frames
        window: deque = deque(maxlen=pairs + 1)  # the latest frames, for the flow of waiting steps
        waiting: deque = deque()  # (index, time_s) of selected steps whose frames have not all arrived
        queued: list = []  # (index, time_s, inputs) ready for the model
        held: list = []  # (index, frame) to show once their step is known
        next_time = 0.0
        last_index = -1
        for index, time_s, frame in self._frames():
            last_index = index
            window.append((index, frame))
            if self.keep_frames:
                held.append((index, frame))
            if self.every is None or time_s >= next_time - 1e-9:
                if index < n_frames - 1:
                    waiting.append((index, time_s))
                if self.every is not None:
                    next_time = (np.floor(time_s / self.every + 1e-9) + 1) * self.every
            while waiting and pair_window(waiting[0][0], pairs, n_frames) + pairs <= index:
                queued.append(self._inputs_from_window(*waiting.popleft(), window))
            if len(queued) >= self.localizer.batch_size or len(held) >= self.held_limit:
                blocked_from = waiting[0][0] if waiting else index + 1  # these frames need a waiting step
                ready = [item for item in held if item[0] < blocked_from]
                held = held[len(ready):]
                yield queued, ready
                queued = []
        while waiting:  # the file ended before the frames it declared: use the last frames decoded
            step_index, step_time = waiting.popleft()
            if step_index < last_index:
                queued.append(self._inputs_from_window(step_index, step_time, window, end=last_index))
        yield queued, held

    def _inputs_from_window(self, index, time_s, window, end=None):
        """Inputs of the step at frame `index` from the frames in `window`."""
        first = pair_window(index, self.pairs, self.info.n_frames if end is None else end + 1)
        frames = [frame for i, frame in window if first <= i <= first + self.pairs]
        return self._inputs(index, time_s, frames, index - first)

    def _inputs(self, index, time_s, frames, key):
        """(index, time_s, inputs), the inputs being made in the pool when there is one.

        The audio window is read here, in order: the video file is not shared between threads.
        """
        audio = self.localizer.audio_window(self.video, time_s)
        if self.pool is None:
            return index, time_s, self.localizer.inputs(frames, key, audio)
        return index, time_s, self.pool.submit(self.localizer.inputs, frames, key, audio)

    def _steps(self, prepared) -> list[LocalizationStep]:
        batch = [inputs.result() if isinstance(inputs, Future) else inputs for _, _, inputs in prepared]
        maps = self.localizer.similarity(batch)
        width, height = self.info.width, self.info.height
        return [make_step(m, width, height, t, i) for (i, t, _), m in zip(prepared, maps)]


def _in_background(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer.

    Exceptions raised there are raised here; leaving the loop early stops the thread.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as error:  # handed to the consumer, which raises it
            put((error, None))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="hearflow-localize-inputs", daemon=True)
    thread.start()
    try:
        while True:
            error, item = queue.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


# --- the `hearflow localize` stage: files in, overlay / JSON / stills out -------------------


class _StepsJson:
    """``{stem}.json`` written as the steps arrive (nothing accumulates), atomically."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.tmp_path = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.header = header
        self.count = 0
        self.file = None

    def __enter__(self) -> "_StepsJson":
        self.file = open(self.tmp_path, "w")
        opening = json.dumps({**self.header, "steps": []}, indent=1)
        self.file.write(opening[: opening.rindex("[") + 1])
        return self

    def write(self, step: LocalizationStep) -> None:
        self.file.write(("," if self.count else "") + "\n  " + json.dumps(step.to_dict()))
        self.count += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.file.write("\n ]\n}\n")
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp_path, self.path)
        finally:
            self.tmp_path.unlink(missing_ok=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise HearflowError(f"cannot encode {path}")
    tmp_path = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp_path.write_bytes(encoded.tobytes())
    os.replace(tmp_path, path)


def outputs(out_dir: str | Path, video_path: str | Path) -> dict[str, Path]:
    """Where `localize_video` writes for one input: json, overlay (mp4) and stills (folder of PNGs)."""
    stem = Path(video_path).stem
    out_dir = Path(out_dir)
    return {
        "json": out_dir / f"{stem}.json",
        "overlay": out_dir / f"{stem}.overlay.mp4",
        "stills": out_dir / f"{stem}.steps",
    }


def localize_video(
    localizer: Localizer,
    video_path: str | Path,
    out_dir: str | Path,
    every: float | None = None,
    key_frame_only: bool = False,
    video: bool = True,
    png: bool = False,
    allow_silent: bool = False,
) -> dict[str, Path]:
    """Localize one video and write its outputs (see `outputs`); returns the paths written.

    ``{stem}.json``: ``{"video", "fps", "width", "height", "checkpoint", "steps": [{"time_s",
    "frame", "peak_xy", "box", "confidence"}]}``; with `video`, ``{stem}.overlay.mp4``: every
    frame at the original size and frame rate with the latest step's heatmap blended on
    (held until the next step), the original audio muxed back (H.264 + AAC); with `png`,
    ``{stem}.steps/{frame:06d}.png``: each step's frame with its heatmap, box and peak.
    """
    paths = outputs(out_dir, video_path)
    silent_overlay = paths["overlay"].with_name(f".{paths['overlay'].stem}.video-only-{os.getpid()}.mp4")
    with ExitStack() as cleanup:
        source = cleanup.enter_context(localizer.open(video_path, every, key_frame_only, allow_silent))
        info = source.info
        if not info.has_audio:
            print(f"hearflow: warning: {video_path}: no audio track; localizing with silence", file=sys.stderr)
        paths["json"].parent.mkdir(parents=True, exist_ok=True)
        if png:
            paths["stills"].mkdir(exist_ok=True)
        header = {"video": str(video_path), "fps": round(info.fps, 6), "width": info.width,
                  "height": info.height, "checkpoint": localizer.checkpoint}
        cleanup.callback(silent_overlay.unlink, missing_ok=True)
        writer = None
        if video:  # video-only first, then the original audio is muxed in (streamed, not re-encoded when AAC)
            writer = VideoWriter(silent_overlay if info.has_audio else paths["overlay"], info.fps)
            cleanup.push(lambda failed, *_: writer.abort() if failed else None)
        keep_frames = video or png
        bar = cleanup.enter_context(tqdm(total=info.n_frames if keep_frames or not key_frame_only else None,
                                         unit="frame", desc=Path(video_path).name, file=sys.stderr, leave=False))
        with _StepsJson(paths["json"], header) as steps_json:
            for kind, *payload in _VideoRun(localizer, source, every, key_frame_only, keep_frames, bar):
                if kind == "step":
                    steps_json.write(payload[0])
                    continue
                index, frame, step = payload
                blended = overlay_heatmap(frame, step.heatmap)
                if writer is not None:
                    writer.write(blended)
                if png and index == step.frame:
                    x0, y0, x1, y1 = step.box
                    still = draw_marker(draw_box(blended, (x0, y0, x1 - 1, y1 - 1)), step.peak_xy)
                    _write_png(paths["stills"] / f"{index:06d}.png", still)
            if writer is not None:
                writer.close()
                if info.has_audio:
                    mux_audio(silent_overlay, video_path, paths["overlay"], start_s=info.frame_time(0))
    return {kind: path for kind, path in paths.items()
            if kind == "json" or (kind == "overlay" and video) or (kind == "stills" and png)}


def localize_videos(
    videos: Sequence[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    every: float | None = None,
    key_frame_only: bool = False,
    video: bool = True,
    png: bool = False,
    allow_silent: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    flow_fusion: float | None = None,
    input_threads: int | None = None,
) -> list[dict[str, Path]]:
    """`hearflow localize`: `localize_video` for each input with one model.

    A video that fails gets one error line on stderr and the others are still
    processed; at the end a HearflowError lists the failures (non-zero exit).
    """
    check_step_options(every, key_frame_only)
    localizer = Localizer.from_checkpoint(checkpoint, device, batch_size=batch_size, flow_fusion=flow_fusion,
                                          input_threads=input_threads)
    written, failed, stems = [], [], {}
    for path in tqdm(videos, unit="video", desc="localize", file=sys.stderr, disable=len(videos) < 2):
        stem = Path(path).stem
        try:
            if stem in stems:
                raise HearflowError(f"{path}: its outputs would overwrite those of {stems[stem]} (same file stem {stem!r})")
            stems[stem] = path
            written.append(localize_video(localizer, path, out_dir, every, key_frame_only, video, png, allow_silent))
        except (HearflowError, OSError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            tqdm.write(f"hearflow: error: {message}", file=sys.stderr)
            failed.append(str(path))
    if failed:
        raise HearflowError(f"{len(failed)} of {len(videos)} video(s) could not be localized: {', '.join(failed)}")
    return written
