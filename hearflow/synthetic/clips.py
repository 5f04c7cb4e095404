"""Synthetic sounding-objects videos whose answer is known.

Each clip shows a few textured shapes on a mildly textured background; one of them
(the *sounding* object) makes the clip's sound. A visual class (shape x hue x
texture) always comes with the same kind of sound (harmonic tone, noise band or
tone-burst rhythm at a class frequency), so the audio says *what* sounds and only
the pairing of sound and appearance, or motion, says *where*. Clips are real MP4
files (H.264 + AAC), so the whole pipeline (`hearflow prepare`, train, evaluate,
localize) runs on them unchanged.

Outputs of `synthesize(out_dir, clips, seed)`:

- ``videos/{id}.mp4`` with ids ``synth{seed}_{index:05d}``;
- ``annotations.json`` in the VGG-SS format: a list of ``{"file": id, "class": name,
  "bbox": [[x0, y0, x1, y1]], "visible_classes": [...]}``, the sounding object's box on
  the key frame (normalised to [0, 1]), ``[]`` when no visible object sounds; ``class``
  is the class heard (``silence`` for a silent clip) and ``visible_classes`` every
  object's class, so off-screen negatives can avoid them (`hearflow.data.negatives`);
- ``clips.json``: per clip, what an evaluation needs to break results down (every
  object's key-frame box, class, motion; twin and no-source flags);
- ``synth.json``: the seed and settings that made the folder.

The key frame is the middle frame, ``n_frames // 2``, which `hearflow prepare`
picks. Every random choice of clip k comes from the seed sequence (seed, k), so a
clip is the same whatever the number of clips, and the same seed gives identical
annotations and identical files (x264 runs single-threaded, without lookahead).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hearflow.errors import HearflowError
from hearflow.io import json_text, write_text
from hearflow.media.encode import write_video
from hearflow.synthetic.plan import ClipPlan, SynthSettings, plan_clip, synth_classes
from hearflow.synthetic.render import render_audio, render_frames


def clip_record(plan: ClipPlan, settings: SynthSettings) -> dict[str, Any]:
    """The clips.json entry: boxes (normalised, on the key frame), classes, motion, flags."""
    classes = synth_classes(settings.classes)
    objects = []
    for obj in plan.objects:
        x0, y0, x1, y1 = obj.box(settings.n_frames, settings.key_frame, settings.key_frame)
        objects.append(
            {
                "class": classes[obj.class_index].name,
                "box": _normalised((x0, y0, x1, y1), settings),
                "box_pixels": [x0, y0, x1, y1],
                "moves": obj.moves,
                "velocity": [round(obj.velocity[0], 4), round(obj.velocity[1], 4)],
            }
        )
    return {
        "id": plan.id,
        "key_frame": settings.key_frame,
        "n_frames": settings.n_frames,
        "fps": settings.fps,
        "width": settings.width,
        "height": settings.height,
        "sounding": plan.sounding,
        "sound_class": None if plan.sound_class is None else classes[plan.sound_class].name,
        "twin": plan.twin,
        "no_source": plan.no_source,
        "objects": objects,
    }


def annotation_record(record: dict[str, Any]) -> dict[str, Any]:
    """The VGG-SS-style annotations.json entry of a clips.json entry."""
    sounding = record["sounding"]
    return {
        "file": record["id"],
        "class": record["sound_class"] or "silence",
        "bbox": [] if sounding is None else [record["objects"][sounding]["box"]],
        "visible_classes": sorted({obj["class"] for obj in record["objects"]}),
    }


def write_clip(path: str | Path, settings: SynthSettings, seed: int, index: int) -> ClipPlan:
    """Render clip `index` of `seed` to the MP4 file `path`; returns its plan."""
    plan = plan_clip(settings, seed, index)
    write_video(
        path,
        render_frames(plan, settings),
        settings.fps,
        audio=render_audio(plan, settings),
        sample_rate=settings.sample_rate,
        preset="ultrafast",
        threads=1,
    )
    return plan


def synthesize(
    out_dir: str | Path, clips: int, seed: int, workers: int = 1, progress: bool = True, **knobs: Any
) -> list[dict[str, Any]]:
    """Write `clips` synthetic clips of `seed` to `out_dir`; returns the clips.json entries.

    `knobs` are SynthSettings fields (e.g. ``twins=0.2, layout="free"``); `workers`
    processes render in parallel (the output does not depend on it).
    """
    fields = {f.name for f in dataclasses.fields(SynthSettings)}
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise HearflowError(f"unknown synthetic setting(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    settings = SynthSettings(**knobs).validate()
    if clips < 1 or seed < 0 or workers < 1:
        raise HearflowError(f"need clips >= 1, seed >= 0 and workers >= 1, got {clips}, {seed}, {workers}")
    out = Path(out_dir)
    videos = out / "videos"
    try:
        videos.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HearflowError(f"cannot create {videos}: {error}") from error
    records = [clip_record(plan_clip(settings, seed, index), settings) for index in range(clips)]
    jobs = [(str(videos / f"{record['id']}.mp4"), settings, seed, index) for index, record in enumerate(records)]
    bar = tqdm(total=clips, desc="synth", unit="clip", disable=not progress)
    if workers == 1:
        for job in jobs:
            _write_clip_job(job)
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_clip_job, jobs, chunksize=4):
                bar.update()
    bar.close()
    _write_json(out / "clips.json", records)
    _write_json(out / "annotations.json", [annotation_record(record) for record in records])
    _write_json(out / "synth.json", {"seed": seed, "clips": clips, "settings": dataclasses.asdict(settings)})
    return records


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"160x128"`` -> (160, 128); ``"128"`` -> (128, 128)."""
    width, cross, height = text.lower().partition("x")
    try:
        return int(width), int(height if cross else width)
    except ValueError:
        raise HearflowError(f"--size must be WxH or N, e.g. 160x128, got {text!r}") from None


def _write_clip_job(job: tuple[str, SynthSettings, int, int]) -> None:
    write_clip(*job)


def _normalised(box: tuple[int, int, int, int], settings: SynthSettings) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0 / settings.width, y0 / settings.height, x1 / settings.width, y1 / settings.height]


def _write_json(path: Path, records: Any) -> None:
    """Atomically write strict JSON (`hearflow.io.json_text`); a list is written one entry per line."""
    if isinstance(records, list):
        text = "[\n" + ",\n".join(json_text(record, indent=None) for record in records) + "\n]\n"
    else:
        text = json_text(records, indent=1) + "\n"
    write_text(path, text)
