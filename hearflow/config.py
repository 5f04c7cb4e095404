"""Configuration as plain data: dataclasses, named presets, YAML in and out, one resolution.

Every default of the method lives here and nowhere else. A `Config` is embedded in
every checkpoint, so a checkpoint alone rebuilds its model and its preprocessing.

Presets (`PRESETS`, written in `hearflow.presets`, the field's methods in
`hearflow.methods`) are the paper's rows, the authors' released variants and EZ-VSL,
FNAC and SLAVC, each named once with a reason for every field it changes
(``hearflow presets`` lists them with the rows they reproduce); the demo's
CPU-sized configurations live with the demo (`hearflow.synthetic.presets`).

Every command builds its configuration the same way (`resolve`): preset < config file
< ``--set KEY=VALUE`` < explicit flags (which are config fields themselves).

Inference options (late flow fusion, object fusion, the sounding threshold) are not
part of a `Config`: they live in `hearflow.inference`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hearflow.errors import HearflowError, option
from hearflow.presets import PRESETS, Preset  # noqa: F401 (Preset: re-exported, as before the move)

PRIORS = ("channel", "spatial", "none")
FLOW_ENCODERS = ("resnet18", "maxpool")
FLOW_CONV1_INITS = ("random", "rgb-mean")
FLOW_ENCODINGS = ("signed", "official")
FLOW_METHODS = ("farneback", "dis")
AUDIO_POOLS = ("avg", "max")
FLOW_POOLS = ("magnitude", "channel-max")
AUDIO_CENTRES = ("key-frame", "clip-middle")
BEST_TIES = ("auc", "first")
# Negative audio (`hearflow.data.negatives`): the image with silence, with white noise,
# with the sound of a clip whose source is not in the frame.
NEGATIVE_KINDS = ("silence", "noise", "offscreen")
LOSS_BATCHES = ("global", "per-process")


@dataclass
class ModelConfig:
    """The network: encoders and flow prior."""

    prior: str = "channel"  # channel (paper Eq. 7-8) | spatial (released) | none (LVS)
    flow_encoder: str = "resnet18"  # resnet18 | maxpool (Table 5)
    prior_dim: int = 64  # d, the projection size of the prior's keys/queries/values
    prior_gate: bool = False  # f_v + gamma * E_p with a learnable gamma starting at 0
    vision_pretrained: bool = True  # pre-trained weights (pretrained_weights) for the image encoder
    vision_frozen: bool = True  # no gradients into the image encoder
    vision_bn_drift: bool = False  # released: frozen encoder's BatchNorm stats still update
    flow_pretrained: bool = True  # pre-trained weights for the flow encoder (resnet18 only)
    flow_conv1_init: str = "rgb-mean"  # random (released) | rgb-mean
    pretrained_weights: str = "imagenet"  # imagenet (torchvision ResNet-18) | a file from hearflow.pretrain
    width: int = 64  # channels of the first ResNet stage; 64 is ResNet-18
    map_stride: int = 32  # input pixels per similarity-map cell: 32, 16 or 8
    audio_pool: str = "avg"  # avg (Eq. 2's global average pooling) | max (released)
    # The max-pool flow encoder (Table 5): magnitude keeps, per cell, the flow vector of the
    # largest magnitude (motion in any direction counts) | channel-max (released: dx and dy
    # pooled separately, so only rightward / downward motion of signed flow survives)
    flow_pool: str = "magnitude"
    # The field's methods (`hearflow.model.heads`); the defaults are HTF's (none of them):
    projection: int = 0  # EZ-VSL: image 1x1 conv and audio linear to this many channels; 0 = none
    heads: int = 1  # SLAVC: 2 projection heads (needs projection > 0), maps averaged over them
    momentum: float = 0.0  # SLAVC: momentum (EMA) copies of the encoders and heads; 0 = none
    momentum_eval: bool = False  # SLAVC's use_mom_eval: eval-mode maps from the momentum copies
    dropout_image: float = 0.0  # dropout on the visual map before the projection (SLAVC, FNAC: 0.9)
    dropout_audio: float = 0.0  # dropout on the audio vector before the projection


@dataclass
class DataConfig:
    """Preprocessing shared by training, evaluation and localization."""

    sample_rate: int = 16000  # Hz of the audio window fed to the spectrogram
    seconds: float = 3.0  # audio window length, centred on audio_centre
    # key-frame: the window centred on the key frame | clip-middle: on the middle of the whole
    # audio track, cut as the release cut its Flickr test audio (`hearflow.media.audio.middle_window`)
    audio_centre: str = "key-frame"
    nperseg: int = 512  # spectrogram window (samples)
    noverlap: int = 274  # spectrogram overlap (samples)
    log_eps: float = 1e-7  # log(S + log_eps)
    spec_mean: float = 0.0  # spectrogram normalisation: (log S - mean) / std
    spec_std: float = 12.0
    image_size: int = 224  # model input, square
    train_resize: int = 246  # short side before the random crop (224 * 1.1)
    flow_encoding: str = "signed"  # signed pixels | official (clip to [0, 255] / 255)
    flip_negates_flow: bool = True  # released code flips the flow image without negating dx
    # How `hearflow prepare` (and localize, on the fly) makes the frame and its flow:
    flow_method: str = "farneback"  # farneback (paper's parameters) | dis (OpenCV DIS, faster)
    flow_size: int = 256  # short side of the stored frame and of the flow; 0 = original size
    flow_pairs: int = 1  # frame pairs around the key frame whose flows are averaged


@dataclass
class ObjectiveConfig:
    """The training loss (``loss``: a name registered in `hearflow.objective.LOSSES`) and its constants.

    The constants are the trimap contrastive loss's (LVS / HTF Eq. 6, as released);
    ``temperature`` is also EZ-VSL's, FNAC's and SLAVC's tau (their presets: 0.03).
    Training with negative audio, around whichever loss is registered
    (`hearflow.objective.global_batch_loss`): ``audio_negatives`` names the kinds
    (comma-separated `NEGATIVE_KINDS`; empty = off), each sample of a batch is paired
    once more with audio of one of them, and ``negatives_weight`` times
    `hearflow.objective.negative_map_loss` (every cell of those maps pushed below
    ``negatives_margin``, softly over ``tau``) is added to the loss.
    """

    loss: str = "lvs"
    eps_p: float = 0.65
    eps_n: float = 0.40
    tau: float = 0.03
    temperature: float = 0.07
    audio_negatives: str = ""  # e.g. "silence,noise,offscreen"; empty: no negative audio in training
    negatives_weight: float = 1.0  # weight of the negative-map term
    negatives_margin: float = 0.40  # cosine below which a negative pair's map counts as dark
    # global: every process's loss is over the gathered global batch (default); per-process: each
    # process's own share only, no gathering (the EZ-VSL / FNAC / SLAVC code's per-GPU behaviour)
    loss_batch: str = "global"
    # FNAC's false-negative-aware terms (`hearflow.objective.ezvsl.fnac_loss`), as published:
    fnac_audio_weight: float = 100.0  # audio-audio similarity vs the audio-visual logits
    fnac_foreground_weight: float = 100.0  # audio-audio similarity vs foreground image-image similarity
    fnac_image_weight: float = 100.0  # image-image similarity vs the audio-visual logits
    fnac_threshold: float = 0.6  # foreground: cells of the min-max normalised own map above this
    fnac_warmup: int = 3  # epochs of the plain EZ-VSL loss before the FNAC terms join


def machine_workers() -> int:
    """The default of ``train.workers``: the CPUs this process may use (its affinity), shared
    evenly by the training processes ``torchrun`` starts on this machine (``LOCAL_WORLD_SIZE``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@dataclass
class TrainConfig:
    """The optimisation recipe (paper: Adam, lr 1e-3, batch 128, 100 epochs)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    workers: int = field(default_factory=machine_workers)  # data-loading processes per training process
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16) | bf16 | fp16 | off
    shuffle_buffer: int = 1000  # samples each loader worker mixes when streaming shards (~150 KB each)
    gpu_inputs: bool = False  # decode JPEGs, resize, crop, flip and spectrogram on the device
    shuffle: bool = True  # a new sample order every epoch; False: sorted ids, the same batches (released)
    best_ties: str = "auc"  # among epochs tied on validation cIoU@0.5 keep: auc (the higher AUC) | first (released)


@dataclass
class Config:
    """Everything that defines a run; `preset` records where it started from."""

    preset: str = "htf"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        """Raise HearflowError for values no code path accepts; return self."""
        m, d = self.model, self.data
        _check_choice("model.prior", m.prior, PRIORS)
        _check_choice("model.flow_encoder", m.flow_encoder, FLOW_ENCODERS)
        _check_choice("model.flow_conv1_init", m.flow_conv1_init, FLOW_CONV1_INITS)
        _check_choice("data.flow_encoding", d.flow_encoding, FLOW_ENCODINGS)
        _check_choice("data.flow_method", d.flow_method, FLOW_METHODS)
        _check_choice("model.audio_pool", m.audio_pool, AUDIO_POOLS)
        _check_choice("model.flow_pool", m.flow_pool, FLOW_POOLS)
        _check_choice("data.audio_centre", d.audio_centre, AUDIO_CENTRES)
        _check_choice("train.best_ties", self.train.best_ties, BEST_TIES)
        if d.flow_size < 0 or d.flow_pairs < 1:
            raise HearflowError("data.flow_size must be >= 0 and data.flow_pairs >= 1")
        _check_choice("model.map_stride", m.map_stride, (8, 16, 32))
        if m.width < 1 or m.prior_dim < 1:
            raise HearflowError("model.width and model.prior_dim must be positive")
        if d.image_size % m.map_stride:
            raise HearflowError(
                f"data.image_size {d.image_size} is not a multiple of model.map_stride {m.map_stride}"
            )
        if d.train_resize < d.image_size:
            raise HearflowError("data.train_resize must be at least data.image_size")
        if d.noverlap >= d.nperseg:
            raise HearflowError("data.noverlap must be smaller than data.nperseg")
        if self.train.shuffle_buffer < 1:
            raise HearflowError("train.shuffle_buffer must be at least 1 (1 = no shuffling within a worker)")
        negative_kinds(self.objective.audio_negatives, "objective.audio_negatives")
        if not self.objective.negatives_weight >= 0:
            raise HearflowError("objective.negatives_weight must be a non-negative weight")
        _check_choice("objective.loss_batch", self.objective.loss_batch, LOSS_BATCHES)
        if m.projection < 0 or m.heads not in (1, 2) or (m.heads == 2 and not m.projection):
            raise HearflowError("model.projection must be >= 0 and model.heads 1 or 2 (2 needs model.projection > 0)")
        if not (0 <= m.momentum < 1 and 0 <= m.dropout_image < 1 and 0 <= m.dropout_audio < 1):
            raise HearflowError("model.momentum, model.dropout_image and model.dropout_audio must lie in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build from a nested dict: its preset's values, then the dict's; unknown keys are an error.

        A preset that is not in `PRESETS` (a demo configuration, or one of another
        version) is only accepted when the dict gives every field, as every config
        hearflow writes does; otherwise the missing fields would silently take other
        values (fields added later, `ADDED_FIELDS`, may be absent). Keys of earlier
        versions (`LEGACY_KEYS`) are dropped.
        """
        if not isinstance(data, dict):
            raise HearflowError(f"a config is a mapping of sections, not a {type(data).__name__}")
        data = dict(data)
        preset = data.pop("preset", "htf")
        if not isinstance(preset, str):
            raise HearflowError(f"a config's preset is a name, not a {type(preset).__name__}")
        fields = {key: value for key, value in _flatten(data).items() if key not in LEGACY_KEYS}
        missing = sorted(set(field_names()) - set(fields) - set(ADDED_FIELDS))
        if not missing:  # a whole config, as hearflow writes them: absent added fields mean what they meant
            fields = {**{key: value for key, value in ADDED_FIELDS.items() if key not in fields}, **fields}
        if preset in PRESETS:
            config = preset_config(preset)
        else:
            if missing:
                raise HearflowError(
                    f"unknown preset {preset!r} and the config does not give every field "
                    f"(missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); "
                    f"presets: {', '.join(PRESETS)}"
                )
            config = Config(preset=str(preset))
        apply_overrides(config, fields)
        return config.validate()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        data = read_config_file(path)
        try:
            return cls.from_dict(data)
        except HearflowError as error:
            raise HearflowError(f"config {path}: {error}") from None


def negative_kinds(text: str | tuple[str, ...] | list[str], name: str = "--negatives") -> tuple[str, ...]:
    """``"silence,noise"`` (or a sequence of names) -> the kinds, in `NEGATIVE_KINDS` order,
    each once; ``""`` -> (). HearflowError naming ``name`` for an unknown kind."""
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text)]
    names = [part for part in names if part]
    unknown = sorted(set(names) - set(NEGATIVE_KINDS))
    if unknown:
        raise HearflowError(f"{name}: unknown negative kind(s) {', '.join(unknown)}; choose from {', '.join(NEGATIVE_KINDS)}")
    return tuple(kind for kind in NEGATIVE_KINDS if kind in names)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise HearflowError(f"{name} is {value!r}; choose one of {', '.join(map(str, choices))}")


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"prior": "x"}}`` -> ``{"model.prior": "x"}``: sections of fields, no deeper
    (a deeper mapping stays a value, which `apply_overrides` refuses)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{field}": inner for field, inner in value.items()})
        else:
            flat[str(key)] = value
    return flat


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted fields (``{"model.prior": "spatial"}``) in place, converting types.

    String values (from ``--set key=value``) are parsed as YAML scalars and then
    converted to the field's type, so ``train.lr=3e-4`` and ``model.vision_frozen=no``
    work. Unknown fields raise HearflowError naming the valid ones.
    """
    for name, value in overrides.items():
        section_name, _, field_name = name.partition(".")
        section = getattr(config, section_name, None)
        if not dataclasses.is_dataclass(section) or not field_name:
            sections = [f.name for f in dataclasses.fields(config) if f.name != "preset"]
            raise HearflowError(f"unknown config key {name!r}; keys look like SECTION.FIELD with SECTION in {sections}")
        fields = {f.name: f for f in dataclasses.fields(section)}
        if field_name not in fields:
            raise HearflowError(
                f"unknown config key {name!r}; {section_name} has {', '.join(sorted(fields))}"
            )
        current = getattr(section, field_name)
        setattr(section, field_name, _convert(name, value, type(current)))
    return config


def _convert(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, (dict, list, tuple, set)):  # every field is a number, a string or a flag
        raise HearflowError(f"config key {name!r} needs a {kind.__name__}, got a {type(value).__name__}")
    if isinstance(value, str) and kind is not str:
        value = yaml.safe_load(value)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise HearflowError(f"config key {name!r} needs a {kind.__name__}, got {reprlib.repr(value)}") from None


def parse_set_options(items: list[str]) -> dict[str, str]:
    """``["model.prior=spatial", ...]`` -> ``{"model.prior": "spatial"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HearflowError(f"{option('--set', 'an entry of sets')} expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


# Keys that earlier versions wrote into a config and this one reads elsewhere:
# ``model.flow_fusion`` became `InferenceOptions.flow_fusion` (checkpoint.load keeps it).
LEGACY_KEYS = ("model.flow_fusion",)
# Fields added since the first version -> the value that reproduces what versions before
# them did: a complete config written before a field existed (every checkpoint's) still
# is complete, and keeps its old meaning whatever its preset's value is now.
ADDED_FIELDS: dict[str, Any] = {
    "objective.loss": "lvs", "objective.audio_negatives": "", "objective.negatives_weight": 1.0,
    "objective.negatives_margin": 0.40, "train.shuffle_buffer": 1000, "train.gpu_inputs": False,
    "model.audio_pool": "max", "model.flow_pool": "channel-max", "data.audio_centre": "key-frame",
    "train.shuffle": True, "train.best_ties": "auc",
    "model.projection": 0, "model.heads": 1, "model.momentum": 0.0, "model.momentum_eval": False,
    "model.dropout_image": 0.0, "model.dropout_audio": 0.0, "objective.loss_batch": "global",
    "objective.fnac_audio_weight": 100.0, "objective.fnac_foreground_weight": 100.0,
    "objective.fnac_image_weight": 100.0, "objective.fnac_threshold": 0.6, "objective.fnac_warmup": 3,
}


def preset_names() -> list[str]:
    return list(PRESETS)


def field_names() -> list[str]:
    """Every config field as ``SECTION.FIELD``, in declaration order."""
    return [name for name in _flatten(Config().to_dict()) if name != "preset"]


def preset_config(name: str, **overrides: Any) -> Config:
    """A fresh Config for a named preset, with dotted-key or section-free overrides.

    ``preset_config("htf", prior="spatial")`` and ``preset_config("htf",
    **{"model.prior": "spatial"})`` are the same: a bare field name is looked up in
    every section and must be unambiguous.
    """
    if name not in PRESETS:
        raise HearflowError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (see `hearflow presets`)")
    config = Config(preset=name)
    apply_overrides(config, copy.deepcopy(PRESETS[name].fields))
    return with_overrides(config, **overrides)


def with_overrides(config: Config, **overrides: Any) -> Config:
    """A validated copy of ``config`` with dotted or bare field names set (see `preset_config`)."""
    config = copy.deepcopy(config)
    apply_overrides(config, {_qualify(config, key): value for key, value in overrides.items()})
    return config.validate()


def _qualify(config: Config, key: str) -> str:
    if "." in key:
        return key
    owners = [
        f.name
        for f in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, f.name))
        and key in {g.name for g in dataclasses.fields(getattr(config, f.name))}
    ]
    if len(owners) != 1:
        raise HearflowError(f"config field {key!r} is {'ambiguous' if owners else 'unknown'}; use SECTION.{key}")
    return f"{owners[0]}.{key}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (any subset of the sections, and ``preset``)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise HearflowError(f"cannot read config file {path}: {error}") from error
    if not isinstance(values, dict):
        raise HearflowError(f"config file {path} does not hold a mapping of config sections")
    return values


def resolve(
    preset: str | None = None,
    file: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """The one way every command builds its Config, each source overriding the previous one.

    preset (default: the file's ``preset`` key; else ``base``, e.g. a run being
    resumed; else ``htf``) < the file's values < ``sets`` (``"KEY=VALUE"`` strings, as
    ``--set`` gives them) < ``flags`` (dotted field names; None values are left out,
    as argparse gives flags that were not passed).
    """
    file_values = dict(read_config_file(file)) if file is not None else {}
    file_preset = file_values.pop("preset", None)
    own_start = preset or file_preset is None
    if own_start:
        config = preset_config(preset) if preset else copy.deepcopy(base) if base is not None else Config()
    try:
        if own_start:
            apply_overrides(config, {key: value for key, value in _flatten(file_values).items()
                                     if key not in LEGACY_KEYS})
        else:  # the file names its own start: a preset, or a whole config (`Config.from_dict`)
            config = Config.from_dict({"preset": file_preset, **file_values})
    except HearflowError as error:
        raise HearflowError(f"config file {file}: {error}") from None
    apply_overrides(config, parse_set_options(list(sets)))
    apply_overrides(config, {key: value for key, value in (flags or {}).items() if value is not None})
    return config.validate()


def differences(recorded: Config, requested: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"FIELD is A there, B here"`` for every field (but ``ignore``) in which two configs differ."""
    old, new = _flatten(recorded.to_dict()), _flatten(requested.to_dict())
    return [f"{key} is {old[key]!r} there, {new[key]!r} here" for key in old if key not in ignore and old[key] != new[key]]


def preset_differences(name: str) -> list[tuple[str, Any, Any, str]]:
    """``(FIELD, value, htf's value, why)`` for every field in which preset ``name`` differs from
    ``htf`` (the paper's text), in declaration order; why is the preset's reason ("" when none)."""
    ours, paper = _flatten(preset_config(name).to_dict()), _flatten(preset_config("htf").to_dict())
    reasons = PRESETS[name].why
    return [(key, ours[key], paper[key], reasons.get(key, "")) for key in field_names() if ours[key] != paper[key]]
