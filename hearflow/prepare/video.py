"""One video -> one prepared sample, or a `StageFailure` saying at which stage and why."""

from __future__ import annotations

from pathlib import Path

from hearflow.data.lists import key_frame_from_one_based
from hearflow.errors import HearflowError
from hearflow.io import storage_problem


class OutputStorageFull(Exception):
    """Writing the sample failed because of the output's storage (no space, read-only, not
    permitted), not the video: the run stops instead of recording a failure. ``error`` is
    the OSError."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class StageFailure(Exception):
    """A video that could not be prepared: the stage and the reason."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


class _Stage:
    """``with _Stage("decode"):`` turns any exception into a StageFailure of that stage."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, StageFailure) or not isinstance(error, Exception):
            return False
        if self.name == "write" and isinstance(error, OSError) and storage_problem(error):
            raise OutputStorageFull(error) from error
        message = str(error) if isinstance(error, HearflowError) else f"{type(error).__name__}: {error}"
        raise StageFailure(self.name, message) from error


def prepare_video(video: str | Path, sample_id: str, out: str | Path, recipe: dict, one_based_key: int | None = None) -> dict:
    """Prepare one video into `out`; returns its manifest row or raises StageFailure."""
    from hearflow.data.prepared import write_sample
    from hearflow.media.audio import read_audio_window, read_middle_window
    from hearflow.media.flow import aggregate_flow, pair_window
    from hearflow.media.video import VideoFile, key_frame_index

    import numpy as np

    with _Stage("probe"):
        clip = VideoFile(video)  # the one pass over the file
    with clip:
        info = clip.info
        with _Stage("probe"):
            if info.n_frames < 2:
                raise HearflowError(f"{video}: {info.n_frames} frame(s); a sample needs at least 2")
        with _Stage("audio"):
            if not info.has_audio:
                raise HearflowError(f"{video}: no audio stream")
            key = key_frame_index(info.n_frames) if one_based_key is None else key_frame_from_one_based(one_based_key, info.n_frames)
            time_s = info.frame_time(key)
            if recipe.get("audio_centre", "key-frame") == "clip-middle":
                audio = read_middle_window(clip, recipe["seconds"], recipe["sample_rate"])
            else:
                audio = read_audio_window(clip, time_s, recipe["seconds"], recipe["sample_rate"])
        with _Stage("decode"):
            pairs = min(recipe["flow_pairs"], info.n_frames - 1)
            first = pair_window(key, pairs, info.n_frames)
            frames = clip.read_frames(first, pairs + 1)
    with _Stage("flow"):
        frame, flow = aggregate_flow(frames, recipe["flow_method"], recipe["flow_size"] or None, key=key - first)
    with _Stage("write"):
        write_sample(out, sample_id, frame, flow, audio, recipe["sample_rate"])
    return {
        "id": sample_id,
        "video": str(video),
        "key_frame": key,
        "time_s": round(time_s, 6),
        "fps": round(info.fps, 6),
        "width": info.width,
        "height": info.height,
        "duration_s": round(info.duration_s, 6),
        "n_frames": info.n_frames,
        "rotation": info.rotation,
        "frame_width": frame.shape[1],
        "frame_height": frame.shape[0],
        "flow_method": recipe["flow_method"],
        "flow_pairs": pairs,
        "flow_mean_magnitude": float(np.hypot(flow[..., 0], flow[..., 1]).mean(dtype=np.float64)),
        "sample_rate": recipe["sample_rate"],
        "audio_seconds": recipe["seconds"],
    }
