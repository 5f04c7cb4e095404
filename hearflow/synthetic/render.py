"""Pixels and sound of a planned synthetic clip (`hearflow.synthetic.plan`).

Rendering adds only pixel and audio noise to a plan, drawn from the seed sequence
(seed, k, 1) for the background and (seed, k, 2) for the sound, so a clip's frames
and track are the same on every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cv2
import numpy as np

from hearflow.errors import HearflowError
from hearflow.synthetic.plan import ClipPlan, SynthClass, SynthObject, SynthSettings, object_colour, plan_clip, synth_classes

SOUND_RMS = 0.1  # loudness of the sounding class before noise is added


def render_object_image(settings: SynthSettings, seed: int, index: int, class_index: int) -> np.ndarray:
    """A still image of one object of class `class_index` (< ``settings.classes``), uint8 H x W x 3.

    The object is sized, textured and lit as in a clip, placed anywhere (the `free`
    layout), on a clip background; image `index` of `seed` is always the same. The
    classifier pre-training of `hearflow.synthetic.pretrain` learns from these.
    """
    if not 0 <= class_index < settings.classes:
        raise HearflowError(f"class {class_index} is not among the {settings.classes} classes")
    single = dataclasses.replace(settings, objects=1, layout="free", seconds=2 / settings.fps, source_moves=0.0,
                                 silent_moves=0.0, twins=0.0, no_source=0.0).validate()
    plan = plan_clip(single, seed, index)
    colour = object_colour(np.random.default_rng([seed, index, 3]), synth_classes(single.classes)[class_index].hue)
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
