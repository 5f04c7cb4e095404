"""Configuration as plain data: dataclasses, named presets, YAML in and out.

Every default of the method lives here and nowhere else. A `Config` is embedded in
every checkpoint, so a checkpoint alone rebuilds its model and its preprocessing.

Presets follow the paper's rows:

- ``htf``: the paper's text (Eq. 7-8 ``channel`` prior, ResNet-18 flow encoder,
  ImageNet-initialised and frozen vision encoder, 16 kHz audio, signed flow).
- ``htf-released``: the authors' released code (``spatial`` prior, randomly
  re-initialised flow conv1, 22,050 Hz audio, 8-bit clipped flow, drifting BatchNorm,
  flip without negating dx).
- ``htf-maxpool`` / ``htf-released-maxpool``: Table 5's max-pool flow encoder.
- ``lvs``: the LVS baseline (no flow prior, ImageNet vision encoder trained).
- ``table4-a`` ... ``table4-f`` and ``table5-a`` ... ``table5-b``: the ablations.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hearflow.errors import HearflowError

PRIORS = ("channel", "spatial", "none")
FLOW_ENCODERS = ("resnet18", "maxpool")
FLOW_CONV1_INITS = ("random", "rgb-mean")
FLOW_ENCODINGS = ("signed", "official")
FLOW_METHODS = ("farneback", "dis")


@dataclass
class ModelConfig:
    """The network: encoders, flow prior and inference options."""

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
    flow_fusion: float = 0.0  # late fusion at inference: S * (1 + alpha * flow magnitude)


@dataclass
class DataConfig:
    """Preprocessing shared by training, evaluation and localization."""

    sample_rate: int = 16000  # Hz of the audio window fed to the spectrogram
    seconds: float = 3.0  # audio window length, centred on the key frame
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
    """The trimap contrastive loss (Eq. 6 as released)."""

    eps_p: float = 0.65
    eps_n: float = 0.40
    tau: float = 0.03
    temperature: float = 0.07


@dataclass
class TrainConfig:
    """The optimisation recipe (paper: Adam, lr 1e-3, batch 128, 100 epochs)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    workers: int = 4
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16) | bf16 | fp16 | off


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
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build from a (possibly partial) nested dict; unknown keys are an error."""
        data = dict(data or {})
        preset = data.pop("preset", "htf")
        config = preset_config(preset) if preset in PRESETS else Config(preset=str(preset))
        apply_overrides(config, _flatten(data))
        return config.validate()

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise HearflowError(f"cannot read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise HearflowError(f"config {path} does not hold a mapping")
        return cls.from_dict(data)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise HearflowError(f"{name} is {value!r}; choose one of {', '.join(map(str, choices))}")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
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
        raise HearflowError(f"config key {name!r} needs a {kind.__name__}, got {value!r}") from None


def parse_set_options(items: list[str]) -> dict[str, str]:
    """``["model.prior=spatial", ...]`` -> ``{"model.prior": "spatial"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HearflowError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


_RELEASED = {
    "model.prior": "spatial",
    "model.flow_conv1_init": "random",
    "model.vision_bn_drift": True,
    "data.sample_rate": 22050,
    "data.flow_encoding": "official",
    "data.flip_negates_flow": False,
}

_TABLE4 = {  # (flow prior, vision pretrained, vision frozen); f is the paper's HTF
    "a": (False, False, False),
    "b": (False, True, False),
    "c": (False, True, True),
    "d": (True, False, False),
    "e": (True, True, False),
    "f": (True, True, True),
}

PRESETS: dict[str, dict[str, Any]] = {
    "htf": {},
    "htf-released": dict(_RELEASED),
    "htf-maxpool": {"model.flow_encoder": "maxpool"},
    "htf-released-maxpool": {**_RELEASED, "model.flow_encoder": "maxpool"},
    "lvs": {"model.prior": "none", "model.vision_frozen": False},
    **{
        f"table4-{row}": {
            "model.prior": "channel" if flow else "none",
            "model.vision_pretrained": pretrained,
            "model.vision_frozen": frozen,
        }
        for row, (flow, pretrained, frozen) in _TABLE4.items()
    },
    "table5-a": {"model.flow_encoder": "maxpool"},
    "table5-b": {},
    # A CPU-sized model for the demo and the tests: quarter-width ResNet-18 blocks on
    # 64 x 64 inputs with an 8 x 8 map; nothing ImageNet-initialised, vision trained.
    "cpu-small": {
        "model.width": 16,
        "model.map_stride": 8,
        "model.prior_dim": 32,
        "model.vision_pretrained": False,
        "model.vision_frozen": False,
        "model.flow_pretrained": False,
        "model.flow_conv1_init": "random",
        "data.image_size": 64,
        "data.train_resize": 70,
        "train.batch_size": 64,
        "train.epochs": 10,
    },
}
# The demo's models (`hearflow demo`, bench/flow_prior_study.py): cpu-small with an 8 kHz
# audio front end (the synthetic sounds lie below 3.2 kHz; it halves the audio encoder's
# work) and flow at the videos' own size. demo-htf's prior is the variant the flow-prior
# study recommends (README, "What the flow prior does: a study on synthetic data").
PRESETS["demo-lvs"] = {**PRESETS["cpu-small"], "model.prior": "none", "data.sample_rate": 8000, "data.flow_size": 0}
PRESETS["demo-htf"] = {**PRESETS["demo-lvs"], "model.prior": "spatial", "model.flow_encoder": "resnet18",
                       "model.prior_gate": True}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, **overrides: Any) -> Config:
    """A fresh Config for a named preset, with dotted-key or section-free overrides.

    ``preset_config("htf", prior="spatial")`` and ``preset_config("htf",
    **{"model.prior": "spatial"})`` are the same: a bare field name is looked up in
    every section and must be unambiguous.
    """
    if name not in PRESETS:
        raise HearflowError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = Config(preset=name)
    apply_overrides(config, copy.deepcopy(PRESETS[name]))
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
