"""Negative audio: a sample's image and flow paired with a sound no visible object makes.

Three kinds (`hearflow.config.NEGATIVE_KINDS`), each an audio window of the model's
length at ``data.sample_rate``, made into the spectrogram by the one recipe
(`hearflow.data.transforms.sample_tensors` / `spectrogram`):

- ``silence``: digital silence, all zeros;
- ``noise``: white Gaussian noise (flat spectrum), RMS `NOISE_RMS` = 0.1 (-20 dBFS,
  the loudness of `hearflow synth`'s sounds; the critical assessment used unit
  variance, 0 dBFS), drawn from a generator seeded by the sample;
- ``offscreen``: the audio window of another sample whose sound is not visible in
  the frame (`offscreen_partner`). With labels (`read_labels`): a sample whose heard
  class is not among the frame's visible classes. `hearflow synth` writes both (the
  heard ``class`` and every object's class in ``visible_classes``), so on synthetic
  sets the off-screen sound never belongs to a class in the frame; on VGG-SS-style
  annotations without ``visible_classes`` only the annotated (sounding) class is known
  to be visible, so the partner is a clip of another class, as in the critical
  assessment; without labels (Flickr SoundNet) it is a random other clip.

Every choice comes from a generator seeded by ``(seed, sample index)`` (and the epoch
in training), so evaluations repeat exactly and a training run is reproducible.
`NegativeAudioDataset` gives a set's samples with one kind of negative audio (for
evaluation); `TrainingNegatives` adds a negative spectrogram of a randomly drawn kind
to every training sample (for `objective.audio_negatives`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from hearflow.config import NEGATIVE_KINDS, DataConfig, negative_kinds
from hearflow.data.prepared import PreparedFolder, read_wav
from hearflow.data.transforms import audio_window_length, fit_audio, sample_tensors, spectrogram
from hearflow.errors import HearflowError

if TYPE_CHECKING:
    from hearflow.data.dataset import PreparedDataset

NOISE_RMS = 0.1  # white noise at -20 dBFS
OFFSCREEN_SEED = 0  # evaluation's partner and noise draws: (OFFSCREEN_SEED, sample index)
PARTNER_TRIES = 64  # random draws before the partner search goes through every candidate
SILENCE = "silence"  # the VGG-SS-style class name of a silent clip (`hearflow synth`)


@dataclass(frozen=True)
class ClipLabels:
    """What a sample's annotation says: the class heard (None: silent or unknown) and the
    classes known to be visible in its frame."""

    sound: str | None
    visible: frozenset[str]


def read_labels(annotations: str | Path) -> dict[str, ClipLabels] | None:
    """Per sample id, its `ClipLabels` from a VGG-SS-style JSON list; None for annotations
    that name no classes (a folder of Flickr SoundNet XML files).

    ``class`` is the heard class (``"silence"`` or absent: none); ``visible_classes``
    (written by `hearflow synth`) lists the frame's classes; without it, an entry with
    a box is known to show its own class only, one without a box none.
    """
    path = Path(annotations)
    if path.is_dir():
        return None
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HearflowError(f"cannot read labels from {path}: {error}") from error
    if not isinstance(entries, list):
        raise HearflowError(f"labels {path}: expected a JSON list of {{\"file\", \"class\", ...}} entries")
    labels = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise HearflowError(f"labels {path}: an entry has no \"file\" name")
        sound = entry.get("class")
        sound = None if sound in (None, "", SILENCE) else str(sound)
        visible = entry.get("visible_classes")
        if visible is None:
            visible = [sound] if sound is not None and entry.get("bbox") else []
        labels[Path(entry["file"]).stem] = ClipLabels(sound, frozenset(map(str, visible)))
    return labels


class Partners:
    """Off-screen partners among ``ids``: for sample i, another sample whose sound is not visible in i's frame.

    labels: `read_labels` (None: any other sample qualifies); every id needs an entry.
    """

    def __init__(self, ids: list[str], labels: dict[str, ClipLabels] | None, where: str = "the set") -> None:
        self.ids = list(ids)
        self.labels = labels
        if labels is not None:
            missing = [sample_id for sample_id in self.ids if sample_id not in labels]
            if missing:
                raise HearflowError(f"{len(missing)} sample(s) of {where} have no labels, e.g. {', '.join(missing[:5])}")
            sounds = sorted({labels[i].sound for i in self.ids if labels[i].sound is not None})
            code = {name: k for k, name in enumerate(sounds)}
            self.sound = np.array([code.get(labels[i].sound, -1) for i in self.ids])
            self.visible = [np.array(sorted(code[c] for c in labels[i].visible if c in code), int) for i in self.ids]

    def allowed(self, index: int, other: int) -> bool:
        """Whether sample ``other`` may give sample ``index`` its off-screen sound."""
        if other == index:
            return False
        if self.labels is None:
            return True
        return self.sound[other] >= 0 and self.sound[other] not in self.visible[index]

    def partner(self, index: int, rng: np.random.Generator) -> int:
        """A partner of sample ``index`` drawn uniformly among those allowed (HearflowError if none)."""
        count = len(self.ids)
        for _ in range(PARTNER_TRIES):
            other = int(rng.integers(count))
            if self.allowed(index, other):
                return other
        candidates = [other for other in range(count) if self.allowed(index, other)]
        if not candidates:
            raise HearflowError(f"no sample can give {self.ids[index]!r} an off-screen sound: every other "
                                "sample's class is visible in its frame or silent")
        return candidates[int(rng.integers(len(candidates)))]


def offscreen_partners(ids: list[str], labels: dict[str, ClipLabels] | None, seed: int = OFFSCREEN_SEED) -> list[str]:
    """Evaluation's partner of every id (`Partners.partner` with the generator ``(seed, index)``)."""
    partners = Partners(ids, labels)
    return [ids[partners.partner(index, np.random.default_rng([seed, index]))] for index in range(len(ids))]


def noise_window(data_config: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise of the model's window length, RMS `NOISE_RMS` (float32)."""
    return (rng.standard_normal(audio_window_length(data_config)) * NOISE_RMS).astype(np.float32)


def silence_window(data_config: DataConfig) -> np.ndarray:
    """Zeros of the model's window length (float32)."""
    return np.zeros(audio_window_length(data_config), np.float32)


def read_audio(folder: PreparedFolder, sample_id: str, data_config: DataConfig) -> np.ndarray:
    """A prepared sample's audio fitted to the model's window (`fit_audio`), without its frame or flow."""
    path = folder.paths(sample_id)["audio"]
    if not path.is_file():
        raise HearflowError(f"sample {sample_id!r}: missing {path}")
    audio, rate = read_wav(path)
    return fit_audio(audio, rate, data_config)


class NegativeAudioDataset(Dataset):
    """The samples of ``base`` (a test-transform `PreparedDataset`) with audio of one negative ``kind``.

    Items are ``base``'s (image, flow, id) with the spectrogram of the negative window;
    for ``offscreen``, ``partners`` gives each sample's partner id (`offscreen_partners`).
    Noise is drawn from ``(OFFSCREEN_SEED, index)``.
    """

    def __init__(self, base: "PreparedDataset", kind: str, partners: list[str] | None = None) -> None:
        if kind not in NEGATIVE_KINDS:
            raise HearflowError(f"unknown negative kind {kind!r}; choose from {', '.join(NEGATIVE_KINDS)}")
        if kind == "offscreen" and (partners is None or len(partners) != len(base.ids)):
            raise ValueError("off-screen negatives need one partner per sample")
        self.base, self.kind, self.partners = base, kind, partners

    def __len__(self) -> int:
        return len(self.base.ids)

    def window(self, index: int) -> np.ndarray:
        """The negative audio window of sample ``index`` at ``data.sample_rate``."""
        data = self.base.data_config
        if self.kind == "silence":
            return silence_window(data)
        if self.kind == "noise":
            return noise_window(data, np.random.default_rng([OFFSCREEN_SEED, index]))
        return read_audio(self.base.folder, self.partners[index], data)

    def __getitem__(self, index: int) -> dict:
        sample_id = self.base.ids[index]
        sample = self.base.folder.read(sample_id)
        data = self.base.data_config
        tensors = sample_tensors(sample.frame, sample.flow, self.window(index), data.sample_rate, data, train=False)
        return {**tensors, "id": sample_id}


class TrainingNegatives(Dataset):
    """``base`` (a training `PreparedDataset`) whose items also hold ``negative_spectrogram``
    (1 x F x T) and ``negative_kind`` (the index of its kind in `NEGATIVE_KINDS`).

    Each item's kind is drawn uniformly from ``kinds`` (e.g. ``"silence,noise,offscreen"``)
    with the generator ``(seed, epoch, index, 1)``, its noise and partner from the same
    generator; the partner is another training sample whose sound is not visible in the
    frame (`Partners` with ``labels``, else any other sample). Reproducible whatever the
    number of loader workers, like the base's augmentations.
    """

    def __init__(self, base: "PreparedDataset", kinds: str, labels: dict[str, ClipLabels] | None = None) -> None:
        self.base = base
        self.kinds = negative_kinds(kinds, "objective.audio_negatives")
        if not self.kinds:
            raise ValueError("TrainingNegatives needs at least one kind")
        self.partners = Partners(base.ids, labels, f"the training set {base.folder.path}") if "offscreen" in self.kinds else None
        self._silence = torch.from_numpy(spectrogram(silence_window(base.data_config), base.data_config))

    @property
    def ids(self) -> list[str]:
        return self.base.ids

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.base.skipped

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        data = self.base.data_config
        rng = np.random.default_rng([self.base.seed, self.base.epoch, index, 1])
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        if kind == "silence":
            negative = self._silence
        else:
            if kind == "noise":
                window = noise_window(data, rng)
            else:
                window = read_audio(self.base.folder, self.base.ids[self.partners.partner(index, rng)], data)
            negative = torch.from_numpy(spectrogram(window, data))
        return {**item, "negative_spectrogram": negative, "negative_kind": NEGATIVE_KINDS.index(kind)}
