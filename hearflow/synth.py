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
  "bbox": [[x0, y0, x1, y1]]}``, the sounding object's box on the key frame
  (normalised to [0, 1]), ``[]`` when no visible object sounds;
- ``clips.json``: per clip, what an evaluation needs to break results down (every
  object's key-frame box, class, motion; twin and no-source flags);
- ``synth.json``: the seed and settings that made the folder.

The key frame is the middle frame, ``n_frames // 2``, which `hearflow prepare`
picks. Every random choice of clip k comes from the seed sequence (seed, k), so a
clip is the same whatever the number of clips, and the same seed gives identical
annotations and identical files (x264 runs single-threaded, without lookahead).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from hearflow.errors import HearflowError
from hearflow.media.encode import write_video

SHAPES = ("ellipse", "rectangle", "triangle", "diamond")
TEXTURES = ("solid", "striped", "checkered", "dotted")
# Hues in an order that keeps the first few classes far apart on the colour wheel.
HUES = (
    (0.0, "red"), (180.0, "cyan"), (90.0, "lime"), (270.0, "violet"),
    (45.0, "amber"), (225.0, "blue"), (135.0, "green"), (315.0, "pink"),
)
SOUNDS = ("tone", "noise", "bursts")
MAX_CLASSES = len(SHAPES) * len(HUES) * len(TEXTURES)
LAYOUTS = ("halves", "free")

# Object size as a share of the frame (the prototype's 50-64 x 84-112 px at 128 x 128):
# large boxes, because the protocol's median threshold predicts half the image.
WIDTH_SHARE = (50 / 128, 64 / 128)
HEIGHT_SHARE = (84 / 128, 112 / 128)
LOWEST_FREQUENCY, HIGHEST_FREQUENCY = 200.0, 3200.0  # Hz, class frequencies lie between
SOUND_RMS = 0.1  # loudness of the sounding class before noise is added
PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class SynthSettings:
    """The generator's knobs; the defaults are the demo's benchmark."""

    seconds: float = 4.0  # clip length
    fps: int = 25  # frames per second (4 s x 25 = 100 frames, key frame 50)
    width: int = 128  # frame size in pixels (even)
    height: int = 128
    sample_rate: int = 16000  # Hz of the mono audio track
    classes: int = 16  # visual classes, each with its own sound (at most MAX_CLASSES)
    objects: int = 2  # objects per clip (exactly 2 in the halves layout)
    layout: str = "halves"  # halves: one object per half | free: anywhere, not overlapping on the key frame
    object_scale: float = 1.0  # multiplies the object size (WIDTH_SHARE x HEIGHT_SHARE of the frame)
    speed_min: float = 3.0  # pixels per frame of a moving object
    speed_max: float = 6.0
    source_moves: float = 0.75  # share of clips whose sounding object moves
    silent_moves: float = 0.35  # chance that each silent object moves
    twins: float = 0.0  # share of clips whose silent object has the sounding object's class
    no_source: float = 0.0  # share of clips in which no visible object sounds
    no_source_silence: float = 0.5  # share of those that are silent (the others hear an off-screen class)
    snr_db: float = 10.0  # sound-to-noise ratio of the track, in dB

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def key_frame(self) -> int:
        """The middle frame, the one `hearflow prepare` uses."""
        return self.n_frames // 2

    def validate(self) -> "SynthSettings":
        """Raise HearflowError for settings no clip can be made from; return self."""
        problems = []
        if self.n_frames < 2:
            problems.append("seconds x fps must give at least 2 frames")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            problems.append(f"width and height must be even and at least 16, got {self.width}x{self.height}")
        if self.sample_rate < 8000:
            problems.append(f"sample_rate must be at least 8000 Hz, got {self.sample_rate}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.objects < 1 or (self.layout == "halves" and self.objects != 2):
            problems.append(f"objects must be 2 in the halves layout and at least 1 in free, got {self.objects}")
        needed = self.objects + (1 if self.no_source > 0 and self.no_source_silence < 1 else 0)
        if not max(2, needed) <= self.classes <= MAX_CLASSES:
            problems.append(f"classes must be in {max(2, needed)}..{MAX_CLASSES}, got {self.classes}")
        for name in ("source_moves", "silent_moves", "twins", "no_source", "no_source_silence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be a share in [0, 1], got {getattr(self, name)}")
        if self.twins + self.no_source > 1.0:
            problems.append("twins + no_source must not exceed 1")
        if self.twins > 0 and self.objects < 2:
            problems.append("twin clips need at least 2 objects")
        if not 0 < self.speed_min <= self.speed_max:
            problems.append(f"need 0 < speed_min <= speed_max, got {self.speed_min}, {self.speed_max}")
        if not math.isfinite(self.snr_db):
            problems.append("snr_db must be finite")
        room = self.width // 2 if self.layout == "halves" else self.width
        largest = _object_size(self, 1.0, 1.0)
        if self.object_scale <= 0:
            problems.append(f"object_scale must be positive, got {self.object_scale}")
        elif largest[0] > room or largest[1] > self.height:
            problems.append(f"object_scale {self.object_scale} makes objects larger than their {self.layout} region")
        if problems:
            raise HearflowError("synthetic settings: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class SynthClass:
    """A visual class and the sound that comes with it."""

    index: int
    name: str
    shape: str
    hue: float  # degrees
    texture: str
    sound: str  # tone | noise | bursts
    frequency: float  # Hz: the tone's fundamental, the noise band's centre, the bursts' carrier
    rhythm: float  # bursts per second (bursts only)


@functools.lru_cache(maxsize=None)
def synth_classes(count: int) -> tuple[SynthClass, ...]:
    """The first `count` classes. Neighbours differ in shape, hue, texture and sound kind;
    frequencies are log-spaced from LOWEST_FREQUENCY to HIGHEST_FREQUENCY in class order."""
    result = []
    for k in range(count):
        shape = k % len(SHAPES)
        hue_slot = (k // len(SHAPES)) % len(HUES)
        texture = (shape + hue_slot + k // (len(SHAPES) * len(HUES))) % len(TEXTURES)
        hue, hue_name = HUES[hue_slot]
        frequency = LOWEST_FREQUENCY * (HIGHEST_FREQUENCY / LOWEST_FREQUENCY) ** (k / max(count - 1, 1))
        result.append(
            SynthClass(
                index=k,
                name=f"{hue_name}-{TEXTURES[texture]}-{SHAPES[shape]}",
                shape=SHAPES[shape],
                hue=hue,
                texture=TEXTURES[texture],
                sound=SOUNDS[k % len(SOUNDS)],
                frequency=frequency,
                rhythm=2.5 * (1 + (k // len(SOUNDS)) % 3),
            )
        )
    return tuple(result)


@dataclass(frozen=True)
class SynthObject:
    """One object of a clip: its look and its straight-line motion, bouncing off its region.

    Positions are the top-left corner in pixels; `velocity` (pixels per frame) holds
    between the key frame and the next one (no bounce happens there).
    """

    class_index: int
    size: tuple[int, int]  # (width, height) in pixels
    key_position: tuple[float, float]  # (x, y) on the key frame, whole pixels
    velocity: tuple[float, float]  # (vx, vy); (0, 0) for a still object
    region: tuple[int, int, int, int]  # the object stays inside (x0, y0, x1, y1)
    colour: tuple[float, float, float]  # RGB in 0..255
    texture_period: float  # pixels
    texture_phase: tuple[float, float]  # pixels

    @property
    def moves(self) -> bool:
        return self.velocity != (0.0, 0.0)

    def positions(self, n_frames: int, key_frame: int) -> np.ndarray:
        """Integer top-left corners of every frame, int64 n_frames x 2 (x, y)."""
        t = np.arange(n_frames, dtype=np.float64) - key_frame
        corners = []
        for axis in (0, 1):
            low = self.region[axis]
            span = self.region[axis + 2] - self.size[axis] - low
            free = self.key_position[axis] + self.velocity[axis] * t - low
            corners.append(low + _bounce(free, span))
        return np.floor(np.stack(corners, axis=1) + 0.5).astype(np.int64)

    def box(self, n_frames: int, frame: int, key_frame: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels on `frame` (x1, y1 exclusive)."""
        x, y = self.positions(n_frames, key_frame)[frame]
        return int(x), int(y), int(x + self.size[0]), int(y + self.size[1])


@dataclass(frozen=True)
class ClipPlan:
    """Every random choice of one clip; rendering adds only pixel and audio noise."""

    id: str
    seed: int
    index: int
    objects: tuple[SynthObject, ...]
    sounding: int | None  # index into objects; None when no visible object sounds
    sound_class: int | None  # the class heard; None for a silent clip
    twin: bool  # a silent object has the sounding object's class
    no_source: str | None  # offscreen | silence | None
    pitch: float  # multiplies the class frequency
    rhythm: float  # multiplies the class rhythm


def clip_id(seed: int, index: int) -> str:
    return f"synth{seed}_{index:05d}"


def plan_clip(settings: SynthSettings, seed: int, index: int) -> ClipPlan:
    """The random choices of clip `index`, from the seed sequence (seed, index)."""
    rng = np.random.default_rng([seed, index, 0])
    n = settings.objects
    draw = rng.random()
    no_source = None
    twin = False
    sounding: int | None = None
    classes = rng.choice(settings.classes, size=n, replace=False)
    if draw < settings.no_source:
        if rng.random() < settings.no_source_silence:
            no_source, sound_class = "silence", None
        else:
            no_source = "offscreen"
            sound_class = int(rng.choice(np.setdiff1d(np.arange(settings.classes), classes)))
    else:
        sounding = int(rng.integers(n))
        if draw < settings.no_source + settings.twins:
            twin = True
            silent = [i for i in range(n) if i != sounding]
            classes[silent[int(rng.integers(len(silent)))]] = classes[sounding]
        sound_class = int(classes[sounding])
    moves = [rng.random() < (settings.source_moves if i == sounding else settings.silent_moves) for i in range(n)]
    geometry = _place_objects(rng, settings, moves)
    objects = []
    for class_index, (size, position, velocity, region) in zip(classes, geometry):
        objects.append(
            SynthObject(
                class_index=int(class_index),
                size=size,
                key_position=position,
                velocity=velocity,
                region=region,
                colour=_object_colour(rng, synth_classes(settings.classes)[int(class_index)].hue),
                texture_period=float(rng.uniform(7, 11)),
                texture_phase=(float(rng.uniform(0, 11)), float(rng.uniform(0, 11))),
            )
        )
    step = (HIGHEST_FREQUENCY / LOWEST_FREQUENCY) ** (1 / max(settings.classes - 1, 1))
    return ClipPlan(
        id=clip_id(seed, index),
        seed=seed,
        index=index,
        objects=tuple(objects),
        sounding=sounding,
        sound_class=sound_class,
        twin=twin,
        no_source=no_source,
        pitch=float(step ** rng.uniform(-0.3, 0.3)),  # a third of the gap to the next class
        rhythm=float(rng.uniform(0.9, 1.1)),
    )


def _object_colour(rng: np.random.Generator, class_hue: float) -> tuple[float, float, float]:
    """RGB in 0..255: the class hue +- 10 degrees, a random saturation and brightness."""
    hue = class_hue + rng.uniform(-10, 10)
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, rng.uniform(0.55, 0.9), rng.uniform(0.65, 0.95))
    return tuple(255.0 * c for c in rgb)


def render_object_image(settings: SynthSettings, seed: int, index: int, class_index: int) -> np.ndarray:
    """A still image of one object of class `class_index` (< ``settings.classes``), uint8 H x W x 3.

    The object is sized, textured and lit as in a clip, placed anywhere (the `free`
    layout), on a clip background; image `index` of `seed` is always the same. The
    classifier pre-training of `hearflow.pretrain` learns from these.
    """
    if not 0 <= class_index < settings.classes:
        raise HearflowError(f"class {class_index} is not among the {settings.classes} classes")
    single = dataclasses.replace(settings, objects=1, layout="free", seconds=2 / settings.fps, source_moves=0.0,
                                 silent_moves=0.0, twins=0.0, no_source=0.0).validate()
    plan = plan_clip(single, seed, index)
    colour = _object_colour(np.random.default_rng([seed, index, 3]), synth_classes(single.classes)[class_index].hue)
    still = dataclasses.replace(plan.objects[0], class_index=class_index, colour=colour)
    frames = list(render_frames(dataclasses.replace(plan, objects=(still,)), single))
    return frames[single.key_frame]


def render_background(plan: ClipPlan, settings: SynthSettings) -> np.ndarray:
    """A still, mildly textured background: uint8 H x W x 3 (smooth blotches + grain)."""
    rng = np.random.default_rng([plan.seed, plan.index, 1])
    size = (settings.width, settings.height)
    level = rng.uniform(90, 150)
    blotches = cv2.resize(rng.uniform(-25, 25, (5, 5)).astype(np.float32), size, interpolation=cv2.INTER_CUBIC)
    tint = cv2.resize(rng.uniform(-10, 10, (3, 3, 3)).astype(np.float32), size, interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 3, (settings.height, settings.width, 1))
    image = level + blotches[..., None] + tint + grain
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_sprite(obj: SynthObject, shape: str, texture: str) -> tuple[np.ndarray, np.ndarray]:
    """An object's pixels (uint8 h x w x 3) and its shape mask (bool h x w).

    The shape fills its box: it touches all four sides (within a pixel).
    """
    width, height = obj.size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = 2 * (x + 0.5) / width - 1, 2 * (y + 0.5) / height - 1  # -1..1 across the box
    if shape == "ellipse":
        mask = u**2 + v**2 <= 1
    elif shape == "rectangle":
        mask = np.ones((height, width), dtype=bool)
    elif shape == "triangle":  # apex up
        mask = np.abs(u) <= (v + 1) / 2 + 1.0 / width
    else:  # diamond
        mask = np.abs(u) + np.abs(v) <= 1 + 2.0 / min(width, height)
    half = obj.texture_period / 2
    px, py = x + obj.texture_phase[0], y + obj.texture_phase[1]
    if texture == "striped":
        pattern = (py // half) % 2 == 1
    elif texture == "checkered":
        pattern = ((px // half) + (py // half)) % 2 == 1
    elif texture == "dotted":
        dx = px % obj.texture_period - half
        dy = py % obj.texture_period - half
        pattern = dx**2 + dy**2 <= (0.3 * obj.texture_period) ** 2
    else:
        pattern = np.zeros_like(mask)
    shade = 1.1 - 0.2 * (y + 0.5) / height  # lit from above, so solid shapes have texture too
    shade = np.where(pattern, 0.55 * shade, shade)
    pixels = np.asarray(obj.colour, dtype=np.float32) * shade[..., None]
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mask


def render_frames(plan: ClipPlan, settings: SynthSettings) -> Iterator[np.ndarray]:
    """The clip's frames one at a time, RGB uint8 H x W x 3 (objects drawn in index order)."""
    background = render_background(plan, settings)
    classes = synth_classes(settings.classes)
    sprites = []  # (offsets into a flat frame for a sprite at (0, 0), the pixel values there)
    for obj in plan.objects:
        pixels, mask = render_sprite(obj, classes[obj.class_index].shape, classes[obj.class_index].texture)
        rows, cols = np.nonzero(mask)
        offsets = ((rows * settings.width + cols) * 3)[:, None] + np.arange(3)
        sprites.append((offsets.ravel(), pixels[rows, cols].ravel()))
    tracks = [obj.positions(settings.n_frames, settings.key_frame) for obj in plan.objects]
    for frame_index in range(settings.n_frames):
        frame = background.copy()
        flat = frame.reshape(-1)
        for (offsets, values), track in zip(sprites, tracks):
            x, y = track[frame_index]
            flat[offsets + (y * settings.width + x) * 3] = values
        yield frame


def render_audio(plan: ClipPlan, settings: SynthSettings) -> np.ndarray:
    """The clip's track: float32 (seconds x sample_rate,), the heard class plus white noise at snr_db."""
    rng = np.random.default_rng([plan.seed, plan.index, 2])
    rate = settings.sample_rate
    n = int(round(settings.n_frames / settings.fps * rate))
    t = np.arange(n) / rate
    signal = np.zeros(n)
    if plan.sound_class is not None:
        sound_class = synth_classes(settings.classes)[plan.sound_class]
        signal = class_sound(sound_class, t, rate, plan.pitch, plan.rhythm, rng)
        signal *= SOUND_RMS / max(float(np.sqrt(np.mean(signal**2))), 1e-12)
    noise = rng.standard_normal(n) * SOUND_RMS * 10 ** (-settings.snr_db / 20)
    return np.clip(signal + noise, -1, 1).astype(np.float32)


def class_sound(
    sound_class: SynthClass, t: np.ndarray, rate: int, pitch: float, rhythm: float, rng: np.random.Generator
) -> np.ndarray:
    """One class's sound at times `t` (seconds), float64, not normalised."""
    frequency = sound_class.frequency * pitch
    if sound_class.sound == "noise":  # a half-octave band of noise around the frequency
        spectrum = np.fft.rfft(rng.standard_normal(len(t)))
        bins = np.fft.rfftfreq(len(t), 1 / rate)
        spectrum[(bins < frequency / 2**0.25) | (bins > frequency * 2**0.25)] = 0
        return np.fft.irfft(spectrum, n=len(t))
    harmonics = [h for h in range(1, 5) if h * frequency < 0.45 * rate]
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    if sound_class.sound == "tone":
        return sum(np.sin(2 * np.pi * h * frequency * t + p) / h for h, p in zip(harmonics, phases))
    carrier = sum(np.sin(2 * np.pi * h * frequency * t + p) / h for h, p in zip(harmonics[:2], phases))
    gate = np.sin(np.pi * (sound_class.rhythm * rhythm * t + rng.uniform())) ** 8  # smooth pulses
    return carrier * gate


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


def _write_clip_job(job: tuple[str, SynthSettings, int, int]) -> None:
    write_clip(*job)


def _object_size(settings: SynthSettings, width_draw: float, height_draw: float) -> tuple[int, int]:
    """Pixels of an object whose size draws are in [0, 1] within WIDTH_SHARE x HEIGHT_SHARE."""
    width = (WIDTH_SHARE[0] + width_draw * (WIDTH_SHARE[1] - WIDTH_SHARE[0])) * settings.object_scale
    height = (HEIGHT_SHARE[0] + height_draw * (HEIGHT_SHARE[1] - HEIGHT_SHARE[0])) * settings.object_scale
    return max(2, int(round(width * settings.width))), max(2, int(round(height * settings.height)))


def _place_objects(rng: np.random.Generator, settings: SynthSettings, moves: list[bool]):
    """(size, key position, velocity, region) per object; key-frame boxes never overlap."""
    for _ in range(PLACEMENT_TRIES):
        placed = []
        for i, moving in enumerate(moves):
            size = _object_size(settings, rng.random(), rng.random())
            if settings.layout == "halves":
                half = settings.width // 2
                region = (i * half, 0, (i + 1) * half, settings.height)
            else:
                region = (0, 0, settings.width, settings.height)
            spans = (region[2] - region[0] - size[0], region[3] - region[1] - size[1])
            velocity = _velocity(rng, settings, spans) if moving else (0.0, 0.0)
            # the key frame and the next one are both inside the region without a bounce
            position = tuple(
                float(rng.integers(
                    math.ceil(region[a] + max(0.0, -velocity[a])),
                    math.floor(region[a] + spans[a] - max(0.0, velocity[a])) + 1,
                ))
                for a in (0, 1)
            )
            placed.append((size, position, velocity, region))
        boxes = [(int(p[0]), int(p[1]), int(p[0]) + s[0], int(p[1]) + s[1]) for s, p, _, _ in placed]
        if not any(_overlap(a, b) for k, a in enumerate(boxes) for b in boxes[k + 1 :]):
            return placed
    raise HearflowError(
        f"cannot place {settings.objects} objects without overlap in a {settings.width}x{settings.height} "
        f"frame; lower objects or object_scale"
    )


def _velocity(rng: np.random.Generator, settings: SynthSettings, spans: tuple[int, int]) -> tuple[float, float]:
    """A random direction at a random speed; an axis with less room than the speed is
    given what room it has and the other axis the rest of the speed."""
    speed = rng.uniform(settings.speed_min, settings.speed_max)
    angle = rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(angle), speed * np.sin(angle)
    if abs(vx) > spans[0]:
        vx = math.copysign(spans[0], vx)
        vy = math.copysign(math.sqrt(speed**2 - vx**2), vy)
    if abs(vy) > spans[1]:
        vy = math.copysign(spans[1], vy)
        vx = math.copysign(min(spans[0], math.sqrt(speed**2 - vy**2)), vx)
    if math.hypot(vx, vy) < speed - 1e-9:
        raise HearflowError(
            f"objects of this size have no room to move {speed:.1f} pixels per frame; "
            f"lower object_scale or speed_max"
        )
    return float(vx), float(vy)


def _bounce(free: np.ndarray, span: int) -> np.ndarray:
    """Fold an unbounded coordinate into [0, span], reflecting at both ends."""
    if span <= 0:
        return np.zeros_like(free)
    folded = np.mod(free, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded)


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _normalised(box: tuple[int, int, int, int], settings: SynthSettings) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0 / settings.width, y0 / settings.height, x1 / settings.width, y1 / settings.height]


def _write_json(path: Path, records: Any) -> None:
    """Atomically write JSON; a list is written one entry per line."""
    if isinstance(records, list):
        text = "[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n"
    else:
        text = json.dumps(records, indent=1) + "\n"
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise HearflowError(f"cannot write {path}: {error}") from error
