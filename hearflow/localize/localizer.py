"""`Localizer`: one model, its inference options, and the inputs of a step.

Inputs are made by the one sample-to-tensors recipe of training and evaluation: the
flow by `hearflow.media.flow.aggregate_flow` at ``data.flow_size`` with
``data.flow_method`` (what `hearflow prepare` stores), then
`hearflow.data.transforms.sample_tensors` (test transform, audio fitted to the window).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from hearflow.backends import make_backend
from hearflow.inference import InferenceOptions
from hearflow.data.prepared import as_stored
from hearflow.data.transforms import audio_window_length, sample_tensors
from hearflow.distributed import resolve_device
from hearflow.errors import HearflowError, option
from hearflow.localize.steps import LocalizationStep, check_step_options, make_step
from hearflow.localize.stream import StepReady, VideoRun
from hearflow.media.audio import read_audio_window
from hearflow.media.flow import aggregate_flow, resize_frame
from hearflow.media.video import VideoFile

DEFAULT_BATCH_SIZE = 16  # steps per forward pass


class Localizer:
    """Heatmaps of the sound source for videos or in-memory frames, from one model.

    model: an HTF model (``hearflow.load(...)`` or ``hearflow.build_model(...)``), used
    as it is (the Localizer moves it to ``device`` and sets eval mode, nothing else);
    device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; batch_size: steps
    per forward pass; flow_fusion: late fusion, maps scaled by 1 + alpha * flow
    magnitude (None: 0, or the checkpoint's recorded default with `from_checkpoint`);
    sounding_threshold: steps are ``sounding`` when their confidence is above it (None:
    uncalibrated, ``sounding`` is None; `from_checkpoint`: the checkpoint's calibrated one);
    object_fusion, object_weights: object-guided localization, maps blended with an
    object-saliency trunk's (`hearflow.inference.InferenceOptions`; None: off);
    checkpoint: the file the model came from, recorded in the JSON output
    (`from_checkpoint` sets it);
    input_threads: threads that make the model inputs of a video's steps (flow,
    resizes, spectrogram) side by side; None = one per CPU core but one when the model
    runs on a GPU (the inputs are then the whole cost), one when it runs on the CPU
    (whose cores the model needs). The results do not depend on it.
    backend, precision: what runs the model (`hearflow.backends.make_backend`: ``auto``
    = ONNX Runtime or else OpenVINO on the CPU when installed, else torch; ``float32`` or
    ``bfloat16``).
    trained_on_synthetic: the checkpoint says its model saw only synthetic clips
    (`from_checkpoint` sets it; `hearflow localize` then says so once).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        flow_fusion: float | None = None,
        checkpoint: str | None = None,
        input_threads: int | None = None,
        backend: str = "auto",
        precision: str = "float32",
        sounding_threshold: float | None = None,
        object_fusion: float | None = None,
        object_weights: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise HearflowError(f"batch size must be at least 1, got {batch_size}")
        if input_threads is not None and input_threads < 1:
            raise HearflowError(f"input threads must be at least 1, got {input_threads}")
        self.options = InferenceOptions().with_arguments(flow_fusion=flow_fusion, sounding_threshold=sounding_threshold,
                                                         object_fusion=object_fusion, object_weights=object_weights)
        self.device = resolve_device(device)
        if input_threads is None:
            input_threads = max(1, (os.cpu_count() or 1) - 1) if self.device.type == "cuda" else 1
        self.input_threads = int(input_threads)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.batch_size = int(batch_size)
        self.checkpoint = checkpoint
        self.uses_flow = self.config.model.prior != "none" or self.options.flow_fusion > 0
        self.backend = make_backend(backend, self.model, self.device, self.options.flow_fusion, precision,
                                    self.options.object_fusion, self.options.object_weights)
        self.trained_on_synthetic = False

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", flow_fusion: float | None = None,
        sounding_threshold: float | None = None, object_fusion: float | None = None,
        object_weights: str | None = None, **options
    ) -> "Localizer":
        """A Localizer for a hearflow or released checkpoint, a Hub folder or ``hf://USER/REPO``
        (see `hearflow.load`); inference options left as None take the checkpoint's recorded defaults."""
        from hearflow.checkpoint import model_from_checkpoint, trained_on_synthetic
        from hearflow.hub import read_any

        raw = read_any(path)
        model, recorded = model_from_checkpoint(raw, path, map_location="cpu")
        chosen = recorded.with_arguments(flow_fusion=flow_fusion, sounding_threshold=sounding_threshold,
                                         object_fusion=object_fusion, object_weights=object_weights)
        localizer = cls(model, device=device, checkpoint=str(path), flow_fusion=chosen.flow_fusion,
                        sounding_threshold=chosen.sounding_threshold, object_fusion=chosen.object_fusion,
                        object_weights=chosen.object_weights, **options)
        localizer.trained_on_synthetic = trained_on_synthetic(raw)
        return localizer

    # --- the model on prepared inputs -------------------------------------------------

    def inputs(
        self, frames: Sequence[np.ndarray], key: int, audio: np.ndarray, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Model inputs for one step: (image 3xSxS, flow 2xSxS, spectrogram 1xFxT) tensors.

        frames: consecutive RGB uint8 frames whose pairs' flows are averaged (two for
        the paper's single pair); key: the index in `frames` of the step's frame;
        audio: mono float32 at ``sample_rate`` Hz (default ``data.sample_rate``), fitted
        to the model's window (`hearflow.data.transforms.fit_audio`). Frame, flow and audio
        go through prepare's storage (`hearflow.data.prepared.as_stored`) first.
        """
        data = self.config.data
        if self.uses_flow:
            frame, flow = aggregate_flow(list(frames), data.flow_method, data.flow_size or None, key)
        else:
            frame = resize_frame(frames[key], data.flow_size or None)
            flow = np.zeros(frame.shape[:2] + (2,), np.float32)
        frame, flow, audio = as_stored(frame, flow, audio)  # what training and evaluation read
        tensors = sample_tensors(frame, flow, audio, sample_rate or data.sample_rate, data, train=False)
        return tensors["image"], tensors["flow"], tensors["spectrogram"]

    def similarity(self, batch: Sequence[tuple[torch.Tensor, ...]]) -> np.ndarray:
        """Own-pair similarity maps (float32 N x h x w) for a list of `inputs` results (run by the backend)."""
        images, flows, specs = (torch.stack(column) for column in zip(*batch))
        return self.backend.maps(images, flows if self.uses_flow else None, specs).numpy()

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
        similarity = self.similarity([self.inputs([frame, next_frame], 0, audio, int(sample_rate))])[0]
        return make_step(similarity, frame.shape[1], frame.shape[0], None, None, self.options.sounding_threshold)

    def localize(
        self,
        video_path: str | Path,
        every: float | None = None,
        key_frame_only: bool = False,
        allow_silent: bool = False,
    ) -> Iterator[LocalizationStep]:
        """Steps through a video, in time order, one at a time (a generator).

        every: None = every frame; else one step at the first frame at or after each
        multiple of `every` seconds. A step's flow is from its frame to the next one; the
        last frame, which has no next one, takes the flow from the frame before it
        (`hearflow.media.flow.pair_window`).
        key_frame_only: a single step at the benchmark's key frame (the middle frame).
        allow_silent: a video without an audio track is localized with silence
        instead of raising HearflowError.
        Each yielded step holds a full-size heatmap: iterate rather than keeping them all.
        """
        with self.open(video_path, every, key_frame_only, allow_silent) as video:
            if not video.info.has_audio:
                warnings.warn(f"{video_path}: no audio track; localizing with silence", stacklevel=2)
            for event in VideoRun(self, video, every, key_frame_only, keep_frames=False):
                if isinstance(event, StepReady):
                    yield event.step

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
            problem = (f"no audio track, so there is no sound to localize "
                       f"({option('--allow-silent', 'allow_silent=True')} localizes with silence)")
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
