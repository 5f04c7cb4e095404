"""One streaming pass over a video: decode once, make the steps' inputs, run the model.

A background thread decodes frames, picks the steps and makes their model inputs
(flow, audio window, spectrogram; with ``input_threads`` threads side by side) while
the consumer's thread runs the model, the heatmaps and whatever consumes the frames
(the overlay encoder): the two halves overlap. Iterating a `VideoRun` yields typed
events in order: `StepReady` for each step and, with ``keep_frames``, `FrameReady`
for every frame with the latest step at or before it (the first step for frames
before it): the heatmap is held between steps. Memory does not grow with the
video's length.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from queue import Full, Queue
from typing import TYPE_CHECKING

import numpy as np

from hearflow.errors import HearflowError
from hearflow.localize.steps import LocalizationStep, make_step
from hearflow.media.flow import pair_window
from hearflow.media.frame_stream import iter_frame_pairs
from hearflow.media.video import VideoFile, key_frame_index

if TYPE_CHECKING:
    from hearflow.localize.localizer import Localizer

# Overlay frames wait for their step's map in a buffer of at most 2 x batch_size frames
# and at most this many bytes (fewer, smaller batches when frames are huge or steps sparse).
FRAME_BUFFER_BYTES = 256 * 2**20


@dataclass
class StepReady:
    """A step's map is known."""

    step: LocalizationStep


@dataclass
class FrameReady:
    """A frame (its index, RGB uint8 pixels) and the step whose heatmap it shows."""

    index: int
    frame: np.ndarray
    step: LocalizationStep


class VideoRun:
    """One streaming pass over a video (module docstring): iterate it for the events.

    The two threads meet in `_chunks`: the inputs of a batch of steps plus the frames
    that need no later step; at most one chunk waits between them, so memory stays
    bounded.
    """

    def __init__(self, localizer: "Localizer", video: VideoFile, every, key_frame_only, keep_frames, progress=None):
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
                yield StepReady(step)
            if current is None and steps:
                current = steps[0]
                for index, frame in early:
                    yield FrameReady(index, frame, current)
                early.clear()
            upcoming = deque(steps)
            for index, frame in frames:
                while upcoming and upcoming[0].frame <= index:
                    current = upcoming.popleft()
                if current is None:
                    early.append((index, frame))
                else:
                    yield FrameReady(index, frame, current)
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
        pairs, n_frames = self.pairs, self.info.n_frames  # the last frame's flow is the pair before it
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
            if 1 <= last_index and step_index <= last_index:
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
        threshold = self.localizer.options.sounding_threshold
        return [make_step(m, width, height, t, i, threshold) for (i, t, _), m in zip(prepared, maps)]


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
