"""The `hearflow localize` stage: files in, overlay video / JSON / stills out."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tqdm import tqdm

from hearflow.data.lists import find_videos
from hearflow.errors import HearflowError
from hearflow.io import atomic_file, json_text, remove_stale_temporaries, temporary_name, write_png
from hearflow.localize.localizer import DEFAULT_BATCH_SIZE, Localizer
from hearflow.localize.steps import LocalizationStep, check_step_options
from hearflow.localize.stream import FrameReady, StepReady, VideoRun
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


# x264 for overlay videos: one thread (less CPU per frame than x264's own threads, which
# compete with the model for the cores, and the same bytes on every run), veryfast
# (superfast and ultrafast save 0.5-1.4 CPU ms a 640 x 360 frame for files 3-4x larger).
OVERLAY_THREADS = 1


def outputs(out_dir: str | Path, video_path: str | Path) -> dict[str, Path]:
    """Where `localize_video` writes for one input: json, overlay (mp4) and stills (folder of PNGs)."""
    stem = Path(video_path).stem
    out_dir = Path(out_dir)
    return {
        "json": out_dir / f"{stem}.json",
        "overlay": out_dir / f"{stem}.overlay.mp4",
        "stills": out_dir / f"{stem}.steps",
    }


class LocalizedVideo(dict):
    """What `localize_video` wrote: a dict of paths (``json``, and ``overlay`` / ``stills``
    when asked for) with the run's figures: ``video`` (the input), ``frames`` (the video's),
    ``steps`` localized, ``seconds`` of wall clock from opening the video to its last file."""

    def __init__(self, paths: dict[str, Path], video: str, frames: int, steps: int, seconds: float) -> None:
        super().__init__(paths)
        self.video, self.frames, self.steps, self.seconds = video, frames, steps, seconds

    def line(self) -> str:
        """``VIDEO: N steps, F frames in S s (R frames/s) -> files``, what `hearflow localize` prints."""
        rate = self.frames / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.video}: {self.steps} steps, {self.frames} frames in {self.seconds:.1f} s "
                f"({rate:.1f} frames/s) -> {', '.join(str(path) for path in self.values())}")


def localize_video(
    localizer: Localizer,
    video_path: str | Path,
    out_dir: str | Path,
    every: float | None = None,
    key_frame_only: bool = False,
    video: bool = True,
    png: bool = False,
    allow_silent: bool = False,
    progress: bool = True,
    on_frame: Callable[[int, int], None] | None = None,
) -> LocalizedVideo:
    """Localize one video and write its outputs (see `outputs`); returns the paths written
    (a `LocalizedVideo`: a dict of paths with the run's counts).

    ``{stem}.json``: `_header` and ``"steps": [{"time_s", "frame", "peak_xy", "box",
    "confidence", "sounding"}]``; with `video`,
    ``{stem}.overlay.mp4``: every frame at the original size and frame rate with the
    latest step's heatmap blended on (held until the next step; faded, `step_alpha`,
    where the calibrated decision says no visible object sounds), the original audio
    muxed back (H.264 + AAC); with `png`, ``{stem}.steps/{frame:06d}.png``: each step's
    frame with its heatmap, box and peak (the faded heatmap alone when not sounding).
    progress: a bar of frames (with frames/s) on stderr.
    on_frame: called as ``on_frame(done, total)`` after each frame is decoded (``done`` of the
    video's ``total`` frames), from the decoding thread: a job's progress (`hearflow serve`).
    An exception it raises stops the run.
    """
    started, steps_written, paths = time.perf_counter(), 0, outputs(out_dir, video_path)
    video_only = paths["overlay"].with_name(f".{paths['overlay'].stem}.video-only.mp4")
    silent_overlay = temporary_name(video_only)
    with ExitStack() as cleanup:
        source = cleanup.enter_context(localizer.open(video_path, every, key_frame_only, allow_silent))
        info = source.info
        _prepare_folder(out_dir, paths, video_only, info, png)
        if not info.has_audio:
            print(f"hearflow: warning: {video_path}: no audio track; localizing with silence", file=sys.stderr)
        header = _header(localizer, video_path, info)
        cleanup.callback(silent_overlay.unlink, missing_ok=True)
        writer = None
        if video:  # video-only first, then the original audio is muxed in (streamed, not re-encoded when AAC)
            writer = VideoWriter(silent_overlay if info.has_audio else paths["overlay"], info.fps,
                                 threads=OVERLAY_THREADS)
            cleanup.push(lambda failed, *_: writer.abort() if failed else None)
        keep_frames = video or png
        bar = cleanup.enter_context(tqdm(total=info.n_frames if keep_frames or not key_frame_only else None,
                                         unit="frame", desc=Path(video_path).name, file=sys.stderr, leave=False,
                                         disable=not progress))
        bar = bar if on_frame is None else _Progress(bar, on_frame, info.n_frames)
        with steps_json(paths["json"], header) as steps:
            for event in VideoRun(localizer, source, every, key_frame_only, keep_frames, bar):
                if isinstance(event, StepReady):
                    steps.write(event.step)
                    steps_written += 1
                    continue
                _write_frame(event, writer, paths["stills"] if png else None)
            if writer is not None:
                writer.close()
                if info.has_audio:
                    mux_audio(silent_overlay, video_path, paths["overlay"], start_s=info.frame_time(0))
    written = {kind: path for kind, path in paths.items()
               if kind == "json" or (kind == "overlay" and video) or (kind == "stills" and png)}
    return LocalizedVideo(written, str(video_path), info.n_frames, steps_written, time.perf_counter() - started)


def _prepare_folder(out_dir: str | Path, paths: dict[str, Path], video_only: Path, info, png: bool) -> None:
    """The output folder (and stills folder) made, without the leftovers of killed runs (whose
    process is gone: another may be writing the same folder)."""
    remove_stale_temporaries(out_dir, [paths["json"].name, paths["overlay"].name, video_only.name], True)
    remove_stale_temporaries(paths["stills"], [f"{index:06d}.png" for index in range(info.n_frames)], True)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    if png:
        paths["stills"].mkdir(exist_ok=True)


class _Progress:
    """The frame bar, with `localize_video`'s ``on_frame`` called beside each update."""

    def __init__(self, bar: tqdm, on_frame: Callable[[int, int], None], total: int) -> None:
        self.bar, self.on_frame, self.total, self.done = bar, on_frame, total, 0

    def update(self, count: int = 1) -> None:
        self.bar.update(count)
        self.done += count
        self.on_frame(min(self.done, self.total), self.total)


def _header(localizer: Localizer, video_path: str | Path, info) -> dict:
    """The JSON's header: ``video``, ``fps``, ``width``, ``height``, ``checkpoint`` and
    ``object_fusion`` (the OGL weight; 0 = off)."""
    return {"video": str(video_path), "fps": round(info.fps, 6), "width": info.width, "height": info.height,
            "checkpoint": localizer.checkpoint, "object_fusion": localizer.options.object_fusion}


def _write_frame(event: FrameReady, writer: VideoWriter | None, stills: Path | None) -> None:
    """One frame with its step's heatmap into the overlay video (faded where nothing visible sounds)
    and, at a step's own frame, a still."""
    step = event.step
    blended = overlay_heatmap(event.frame, step.heatmap, step_alpha(step.sounding))
    if writer is not None:
        writer.write(blended)
    if stills is not None and event.index == step.frame and step.sounding is False:
        write_png(stills / f"{event.index:06d}.png", blended)  # nothing visible sounds: no box, no peak
    elif stills is not None and event.index == step.frame:
        x0, y0, x1, y1 = step.box
        still = draw_marker(draw_box(blended, (x0, y0, x1 - 1, y1 - 1)), step.peak_xy)
        write_png(stills / f"{event.index:06d}.png", still)


def video_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The videos of `hearflow localize`'s arguments: files as they are, folders searched
    recursively for video files (`hearflow.data.lists.find_videos`, as prepare does)."""
    videos = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = find_videos(item)
            if not found:
                raise HearflowError(f"{item}: no video files in this folder")
            videos.extend(found)
        else:
            videos.append(item)
    return videos


SYNTHETIC_NOTE = ("{checkpoint} was trained on synthetic clips only (hearflow synth / the demo): on real videos its "
                  "heatmaps mean little; use a released HTF checkpoint or one trained with `hearflow train` on "
                  "VGG-Sound or Flickr SoundNet")


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
    backend: str = "auto",
    precision: str = "float32",
    quiet: bool = False,
    sounding_threshold: float | None = None,
    object_fusion: float | None = None,
    object_weights: str | None = None,
) -> list[LocalizedVideo]:
    """`hearflow localize`: `localize_video` for each input (files, or folders of videos) with one model.

    Prints one line per video on stdout (what was written where, and the speed) and
    progress bars on stderr, unless `quiet`; says once on stderr when the checkpoint
    was trained on synthetic clips only. A video that fails gets one error line on
    stderr and the others are still processed; at the end a HearflowError lists the
    failures (non-zero exit).
    """
    check_step_options(every, key_frame_only)
    videos = video_inputs(videos)
    localizer = Localizer.from_checkpoint(checkpoint, device, batch_size=batch_size, flow_fusion=flow_fusion,
                                          input_threads=input_threads, backend=backend, precision=precision,
                                          sounding_threshold=sounding_threshold, object_fusion=object_fusion,
                                          object_weights=object_weights)
    if localizer.trained_on_synthetic:
        print("hearflow: note: " + SYNTHETIC_NOTE.format(checkpoint=checkpoint), file=sys.stderr)
    written, failed, stems = [], [], {}
    for path in tqdm(videos, unit="video", desc="localize", file=sys.stderr, disable=quiet or len(videos) < 2):
        stem = Path(path).stem
        try:
            if stem in stems:
                raise HearflowError(f"{path}: its outputs would overwrite those of {stems[stem]} (same file stem {stem!r})")
            stems[stem] = path
            result = localize_video(localizer, path, out_dir, every, key_frame_only, video, png, allow_silent,
                                    progress=not quiet)
            written.append(result)
            if not quiet:
                tqdm.write(result.line(), file=sys.stdout)
        except (HearflowError, OSError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            tqdm.write(f"hearflow: error: {message}", file=sys.stderr)
            failed.append(str(path))
    if failed:
        raise HearflowError(f"{len(failed)} of {len(videos)} video(s) could not be localized: {', '.join(failed)}")
    return written
