"""The `hearflow localize` stage: files in, overlay video / JSON / stills out."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tqdm import tqdm

from hearflow.errors import HearflowError
from hearflow.io import TMP_MARKER, atomic_file, json_text, write_png
from hearflow.localize.localizer import DEFAULT_BATCH_SIZE, Localizer
from hearflow.localize.steps import LocalizationStep, check_step_options
from hearflow.localize.stream import StepReady, VideoRun
from hearflow.media.encode import VideoWriter, mux_audio
from hearflow.overlay import draw_box, draw_marker, overlay_heatmap, step_alpha


class _StepsJson:
    """The ``steps`` list of ``{stem}.json``, written as steps arrive (nothing accumulates)."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.count = 0

    def write(self, step: LocalizationStep) -> None:
        self.handle.write(("," if self.count else "") + "\n  " + json_text(step.to_dict(), indent=None))
        self.count += 1


@contextmanager
def steps_json(path: Path, header: dict) -> Iterator[_StepsJson]:
    """``{stem}.json``: ``header`` plus the steps written through the yielded writer; the file
    appears, whole and strict JSON, only when the block succeeds (`hearflow.io.atomic_file`)."""
    with atomic_file(path, "w") as handle:
        opening = json_text({**header, "steps": []}, indent=1)
        handle.write(opening[: opening.rindex("[") + 1])
        yield _StepsJson(handle)
        handle.write("\n ]\n}\n")


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
    "frame", "peak_xy", "box", "confidence", "sounding"}]}``; with `video`,
    ``{stem}.overlay.mp4``: every frame at the original size and frame rate with the
    latest step's heatmap blended on (held until the next step; faded, `step_alpha`,
    where the calibrated decision says no visible object sounds), the original audio
    muxed back (H.264 + AAC); with `png`, ``{stem}.steps/{frame:06d}.png``: each step's
    frame with its heatmap, box and peak (the faded heatmap alone when not sounding).
    """
    paths = outputs(out_dir, video_path)
    silent_overlay = paths["overlay"].with_name(f".{paths['overlay'].stem}.video-only{TMP_MARKER}{os.getpid()}.mp4")
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
        with steps_json(paths["json"], header) as steps:
            for event in VideoRun(localizer, source, every, key_frame_only, keep_frames, bar):
                if isinstance(event, StepReady):
                    steps.write(event.step)
                    continue
                index, step = event.index, event.step
                blended = overlay_heatmap(event.frame, step.heatmap, step_alpha(step.sounding))
                if writer is not None:
                    writer.write(blended)
                if png and index == step.frame and step.sounding is False:
                    write_png(paths["stills"] / f"{index:06d}.png", blended)
                elif png and index == step.frame:
                    x0, y0, x1, y1 = step.box
                    still = draw_marker(draw_box(blended, (x0, y0, x1 - 1, y1 - 1)), step.peak_xy)
                    write_png(paths["stills"] / f"{index:06d}.png", still)
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
    sounding_threshold: float | None = None,
) -> list[dict[str, Path]]:
    """`hearflow localize`: `localize_video` for each input with one model.

    A video that fails gets one error line on stderr and the others are still
    processed; at the end a HearflowError lists the failures (non-zero exit).
    """
    check_step_options(every, key_frame_only)
    localizer = Localizer.from_checkpoint(checkpoint, device, batch_size=batch_size, flow_fusion=flow_fusion,
                                          input_threads=input_threads, sounding_threshold=sounding_threshold)
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
