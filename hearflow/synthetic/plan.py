"""The random choices of a synthetic clip: settings, visual classes, objects and their motion.

A visual class (shape x hue x texture) always comes with the same kind of sound
(harmonic tone, noise band or tone-burst rhythm at a class frequency), so the audio
says *what* sounds and only the pairing of sound and appearance, or motion, says
*where*. `plan_clip` draws every choice of clip k from the seed sequence (seed, k):
a clip is the same whatever the number of clips. `hearflow.synthetic.render` turns a
plan into pixels and sound, `hearflow.synthetic.clips` into files.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np

from hearflow.errors import HearflowError

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
                colour=object_colour(rng, synth_classes(settings.classes)[int(class_index)].hue),
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


def object_colour(rng: np.random.Generator, class_hue: float) -> tuple[float, float, float]:
    """RGB in 0..255: the class hue +- 10 degrees, a random saturation and brightness."""
    hue = class_hue + rng.uniform(-10, 10)
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, rng.uniform(0.55, 0.9), rng.uniform(0.65, 0.95))
    return tuple(255.0 * c for c in rgb)


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
