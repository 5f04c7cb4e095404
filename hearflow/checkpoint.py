"""Checkpoints: hearflow's own format and the two released ones, loaded safely.

hearflow's format is a dict::

    {"format": "hearflow-checkpoint", "hearflow_version": "...", "config": {...},
     "state_dict": {...}, ["inference": {...},] **extra}

so a checkpoint alone rebuilds its model and its preprocessing; ``inference``, when
present, holds the defaults of its inference options (`InferenceOptions`), which
`load_model` returns beside the model (a config of an earlier version that held
``model.flow_fusion`` gives that default). `load` also reads
the released ``.pth`` (``{"model": state_dict}``) and the released Lightning
``.ckpt`` (``{"state_dict": {"model.<name>": ...}, "hyper_parameters": ...}``), and
builds the ``htf-released`` preset for them (``htf-released-maxpool`` when the
attention key takes the 2 flow channels); EZ-VSL's, FNAC's and SLAVC's published
``best.pth`` (``{"model": state_dict}``, keys maybe ``module.``-prefixed) are told by
their layout and get the ``ezvsl`` or ``slavc`` preset (`released_config`). Their
inputs are then made by hearflow's preprocessing (HTF's spectrogram), not their own. Files are always read with
``torch.load(weights_only=True)``: nothing but tensors, plain containers and
``argparse.Namespace`` (in Lightning hyper-parameters) is ever unpickled; a file that
holds anything else (code-bearing objects) is refused for safety.

Every problem with a file is one HearflowError naming it: unreadable, damaged,
unsafe, nested too deeply, without a config or weights, a config this version cannot
use or build, or weights that do not fit it. The model is first built on the "meta"
device (no memory) and its parameter shapes compared with the file's, so an absurd
config (``model.width: 1000000``) is refused before anything is allocated.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hearflow.config import Config
from hearflow.inference import InferenceOptions
from hearflow.errors import HearflowError
from hearflow.io import atomic_file, storage_problem
from hearflow.model import HTF, build_model

FORMAT = "hearflow-checkpoint"
_RESERVED = ("format", "hearflow_version", "config", "state_dict", "inference")


def save_checkpoint(path: str | Path, model: HTF, inference: InferenceOptions | None = None, **extra: Any) -> None:
    """Write ``model`` (its config and weights) and ``extra`` to ``path`` atomically.

    ``model`` is the HTF module itself, not a DistributedDataParallel or compiled wrapper.
    ``inference``: defaults of the inference options to record (none: the built-in ones).

    ``extra`` holds what a resume needs (optimizer state, epoch, rng state, metrics);
    its values must be tensors, numbers, strings or plain containers of them so that
    the file loads with ``weights_only=True``.
    """
    from hearflow import __version__

    clashes = sorted(set(extra) & set(_RESERVED))
    if clashes:
        raise ValueError(f"extra checkpoint entries may not be named {clashes}")
    checkpoint = {
        "format": FORMAT,
        "hearflow_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        **({} if inference is None else {"inference": dataclasses.asdict(inference)}),
        **extra,
    }
    try:
        with atomic_file(path) as file:
            torch.save(checkpoint, file)
    except (OSError, RuntimeError) as error:  # torch reports a full disk as RuntimeError too
        problem = storage_problem(error) or _first_line(error)
        try:
            free = f"; {shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MB free on its disk"
        except OSError:
            free = ""
        raise HearflowError(f"cannot write checkpoint {path}: {problem}{free} (an earlier {Path(path).name} "
                            "is left as it was)") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (any of the three formats), read with ``weights_only=True``."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as error:
        raise HearflowError(f"cannot read checkpoint {path}: {error.strerror or error}") from error
    except RecursionError:
        raise HearflowError(f"cannot read checkpoint {path}: its objects are nested too deeply") from None
    except Exception as error:  # torch raises many types for unreadable or unsafe files
        raise HearflowError(f"cannot read checkpoint {path}: {_describe_read_error(error)}") from error
    if not isinstance(checkpoint, dict):
        raise HearflowError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _describe_read_error(error: Exception) -> str:
    """One line for a torch.load failure: the refused global, or the error with its type
    (never torch's advice to load with ``weights_only=False``, which runs the file's code)."""
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"the file contains code-bearing objects ({refused[1]}), refused for safety: hearflow loads "
                "weights only, and only from checkpoints of hearflow or the released HTF code")
    marker = "WeightsUnpickler error:"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if marker in text:  # torch's reason follows the marker, on its line or the next
        reason = next((line for line in text.split(marker, 1)[1].splitlines() if line.strip()), "").strip()
    else:
        reason = lines[0] if lines and "weights_only" not in lines[0] else ""
    if reason.startswith("Unsupported operand"):  # not a pickle at all: text, an image, a .npy, ...
        return "not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy pickle)"
    return f"not a PyTorch checkpoint or a damaged one ({type(error).__name__}{': ' + reason if reason else ''})"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load(path: str | Path, map_location: str | torch.device = "cpu") -> HTF:
    """A model from a hearflow or released checkpoint, in eval mode, config at ``.config``."""
    return load_model(path, map_location)[0]


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HTF, InferenceOptions]:
    """(the model, in eval mode, and the checkpoint's recorded inference options)."""
    return model_from_checkpoint(load_checkpoint(path, map_location), path, map_location)


def trained_on_synthetic(checkpoint: dict[str, Any]) -> bool:
    """Whether a raw checkpoint (`load_checkpoint`) says its model saw only synthetic clips.

    `hearflow train` records ``training_data`` (`hearflow.data.prepared.training_data`);
    released checkpoints were trained on VGG-Sound or Flickr SoundNet; a hearflow
    checkpoint of an earlier version records nothing (False: not known).
    """
    record = checkpoint.get("training_data") if checkpoint.get("format") == FORMAT else None
    return isinstance(record, dict) and record.get("synthetic") is True


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[HTF, InferenceOptions]:
    """`load_model` of a checkpoint dict already read from ``path`` (named in errors)."""
    options = InferenceOptions()
    if checkpoint.get("format") == FORMAT:
        config, options = _recorded_config(path, checkpoint)
        state_dict = checkpoint.get("state_dict")
        if not isinstance(state_dict, dict):
            raise HearflowError(f"checkpoint {path} holds no weights (its 'state_dict' entry is missing or not a dict)")
    else:
        state_dict = _released_state_dict(path, checkpoint)
        config = released_config(state_dict)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for a config that does not fit
            _check_state(build_model(config=config), state_dict, path)
    except (ValueError, TypeError, RuntimeError) as error:
        raise HearflowError(f"checkpoint {path} holds a config hearflow cannot build: {_first_line(error)}") from None
    model = build_model(config=config)
    load_state(model, state_dict, path)
    return model.to(map_location).eval(), options


def _recorded_config(path: str | Path, checkpoint: dict[str, Any]) -> tuple[Config, InferenceOptions]:
    """The config and inference options a hearflow checkpoint records; HearflowError naming the problem."""
    if "config" not in checkpoint:
        raise HearflowError(f"checkpoint {path} has no config: it cannot say which model its weights belong to")
    try:
        return Config.from_dict(checkpoint["config"]), _recorded_options(checkpoint)
    except HearflowError as error:
        raise HearflowError(f"checkpoint {path} holds a config this version cannot use: {error}") from error
    except RecursionError:
        raise HearflowError(f"checkpoint {path} holds a config nested too deeply to be one") from None


def _recorded_options(checkpoint: dict[str, Any]) -> InferenceOptions:
    """The checkpoint's ``inference`` entry, or what an earlier version's config implied."""
    recorded = checkpoint.get("inference")
    if recorded is None:
        legacy = (checkpoint.get("config") or {}).get("model", {}).get("flow_fusion", 0.0)
        recorded = {"flow_fusion": legacy}
    if not isinstance(recorded, dict):
        raise HearflowError(f"its inference options are a {type(recorded).__name__}, not a mapping")
    known = {field.name for field in dataclasses.fields(InferenceOptions)}
    unknown = sorted(map(str, set(recorded) - known))
    if unknown:
        raise HearflowError(f"unknown inference option(s) {', '.join(unknown)}")
    try:
        values = {name: value if value is None or name == "object_weights" else float(value)
                  for name, value in recorded.items()}
    except (TypeError, ValueError):
        raise HearflowError("its inference options are not numbers") from None
    return InferenceOptions(**values).validate()


def record_inference(path: str | Path, options: InferenceOptions, out: str | Path | None = None, **entries: Any) -> Path:
    """Store ``options`` as the checkpoint's inference defaults, with ``entries`` beside them
    (e.g. ``calibration={...}``); returns the file written.

    A hearflow checkpoint is rewritten as it is (weights, optimiser and the rest kept)
    at ``out``, or in place when ``out`` is None; a released one is converted to
    hearflow's format, which needs ``out``. The file is replaced atomically.
    """
    checkpoint = load_checkpoint(path)
    clashes = sorted(set(entries) & set(_RESERVED))
    if clashes:
        raise ValueError(f"extra checkpoint entries may not be named {clashes}")
    if checkpoint.get("format") == FORMAT:
        checkpoint.update(entries, inference=dataclasses.asdict(options.validate()))
        target = Path(out or path)
        with atomic_file(target) as file:
            torch.save(checkpoint, file)
        return target
    if out is None:
        raise HearflowError(f"{path} is a released checkpoint, which cannot hold inference options: "
                            "pass --out FILE.pt to write it in hearflow's format with them")
    model, _ = load_model(path)
    save_checkpoint(out, model, inference=options.validate(), **entries)
    return Path(out)


def released_config(state_dict: dict[str, Any]) -> Config:
    """The config of a released state dict, told by its layout: SLAVC's (two heads,
    ``img_proj1``, with ``momentum_*`` encoders), EZ-VSL's (``img_proj``; FNAC's code
    saves the same layout), else HTF's released one (``htf-released-maxpool`` when the
    attention key takes the 2 flow channels). The projection size is read from the weights."""
    for preset, head in (("slavc", "img_proj1.weight"), ("ezvsl", "img_proj.weight")):
        weight = state_dict.get(head)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            return Config.from_dict({"preset": preset, "model": {"projection": int(weight.shape[0])}})
    key_weight = state_dict.get("flowatt.key_conv.weight")
    maxpool = isinstance(key_weight, torch.Tensor) and key_weight.ndim == 4 and key_weight.shape[1] == 2
    return Config.from_dict({"preset": "htf-released-maxpool" if maxpool else "htf-released"})


def _released_state_dict(path: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights of a released file: ``{"model": ...}`` (HTF's .pth; EZ-VSL's, FNAC's and SLAVC's
    ``best.pth``, whose ``module.`` prefix of DistributedDataParallel is dropped) or Lightning's."""
    if isinstance(checkpoint.get("model"), dict):
        prefix = "module."
        return {name[len(prefix):] if isinstance(name, str) and name.startswith(prefix) else name: value
                for name, value in checkpoint["model"].items()}
    if isinstance(checkpoint.get("state_dict"), dict):
        prefix = "model."
        return {
            name[len(prefix):] if name.startswith(prefix) else name: value
            for name, value in checkpoint["state_dict"].items()
        }
    raise HearflowError(
        f"{path} is not a hearflow checkpoint nor a released one: it has no 'format', 'model' "
        f"or 'state_dict' entry (top-level keys: {', '.join(map(str, list(checkpoint)[:8])) or 'none'})"
    )


def load_state(model: torch.nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """Load ``state_dict`` strictly; any mismatch is one HearflowError naming the keys."""
    _check_state(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)


def _check_state(model: torch.nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """HearflowError naming the missing, unexpected and misshapen keys of ``state_dict`` for ``model``."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    mismatched = [
        f"{name} {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
        f" (model: {tuple(expected[name].shape)})"
        for name, value in state_dict.items()
        if name in expected and (not isinstance(value, torch.Tensor) or value.shape != expected[name].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} {len(names)}: {_first(names)}"
            for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched))
            if names
        ]
        raise HearflowError(
            f"checkpoint {path} does not match a {model.config.preset} model: {'; '.join(parts)}"
        )


def _first(names: list[str], count: int = 6) -> str:
    shown = ", ".join(map(str, names[:count]))
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")
