"""Checkpoints on the Hugging Face Hub: a folder of safetensors, JSON and a model card.

A *Hub folder* (what `save_pretrained` writes, what ``hearflow push`` uploads)::

    model.safetensors    the weights (`safetensors`: tensors only, no code)
    config.json          {"format": "hearflow-hub", "hearflow_version", "config",
                          ["inference",] and the checkpoint's JSON records: epoch,
                          metrics, training_data, run, calibration, ...}
    train-config.yaml    the model's config as `hearflow train --config` reads it
    README.md            the model card: how to use it, the evaluation table from
                         results.json, the command that trained it
    results.json         `hearflow evaluate --out`'s results, when given or found

`from_pretrained` (and `hearflow.load`, `Localizer.from_checkpoint`, and the
``--checkpoint`` of localize, evaluate, export and serve) reads a local Hub folder or ``hf://USER/REPO[@REVISION]``, which
`huggingface_hub.snapshot_download` fetches into its cache (only the files above;
``HF_HUB_OFFLINE=1`` uses the cache alone). Loading parses JSON and safetensors only:
nothing from a repository is ever executed or unpickled. What a resume needs
(optimizer, scaler and generator states) stays out of the Hub folder.

The Hub needs the optional extra: ``pip install "hearflow[hub]"``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from hearflow.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint
from hearflow.config import Config
from hearflow.inference import InferenceOptions
from hearflow.errors import HearflowError
from hearflow.hub.card import model_card
from hearflow.io import json_text, write_atomic, write_json, write_text
from hearflow.model import HTF

HUB_FORMAT = "hearflow-hub"
SCHEME = "hf://"
WEIGHTS, CONFIG, CARD, RESULTS, TRAIN_CONFIG = "model.safetensors", "config.json", "README.md", "results.json", "train-config.yaml"
HUB_FILES = (WEIGHTS, CONFIG, CARD, RESULTS, TRAIN_CONFIG)
RESUME_ONLY = ("optimizer", "scaler", "rng")  # what only a resume needs: kept out of the Hub folder
INSTALL = 'pip install "hearflow[hub]"'


def is_hub_source(source: str | Path) -> bool:
    """Whether ``source`` names a Hub repository (``hf://...``) or a local Hub folder."""
    return str(source).startswith(SCHEME) or (Path(source).is_dir() and (Path(source) / CONFIG).is_file())


def parse_repo(source: str) -> tuple[str, str | None]:
    """``hf://USER/REPO[@REVISION]`` (or ``USER/REPO[@REVISION]``) -> (repo id, revision or None)."""
    name = source.removeprefix(SCHEME)
    repo, _, revision = name.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(part in (".", "..") for part in parts):
        raise HearflowError(f"{source}: not a Hub repository name; write hf://USER/REPO or hf://USER/REPO@REVISION")
    return repo, revision or None


def save_pretrained(source: str | Path | HTF, folder: str | Path, results: str | Path | dict | None = None,
                    repo: str | None = None, inference: InferenceOptions | None = None) -> Path:
    """Write the Hub folder of ``source`` (a checkpoint file, or an HTF model) to ``folder``.

    results: `hearflow evaluate --out`'s results.json (a path or its dict) for the
    model card's table; None: ``results.json`` beside a checkpoint file when there is
    one. repo: the ``USER/REPO`` the card's examples name (default: the folder's name).
    inference: a model's inference defaults (a checkpoint file records its own).
    Returns ``folder``.
    """
    checkpoint, origin = _as_checkpoint(source, inference)
    if results is None and origin is not None and (origin.parent / RESULTS).is_file():
        results = origin.parent / RESULTS
    table = _read_results(results) if isinstance(results, (str, Path)) else results
    state = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in checkpoint["state_dict"].items()}
    header = _header(checkpoint, origin)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / WEIGHTS, _safetensors().torch.save(state, metadata={"format": HUB_FORMAT}))
    write_json(folder / CONFIG, header)
    write_text(folder / TRAIN_CONFIG, Config.from_dict(header["config"]).to_yaml())
    if table is not None:
        write_json(folder / RESULTS, table)
    else:
        (folder / RESULTS).unlink(missing_ok=True)  # an earlier save's results are not this model's
    write_text(folder / CARD, model_card(header, table, repo or folder.name))
    return folder


def from_pretrained(source: str | Path, map_location: str | torch.device = "cpu") -> HTF:
    """The model of a Hub folder or ``hf://USER/REPO[@REVISION]``, in eval mode (see the module docstring)."""
    checkpoint = read_hub_checkpoint(source)
    return model_from_checkpoint(checkpoint, source, map_location)[0]


def load(path: str | Path, map_location: str | torch.device = "cpu") -> HTF:
    """`hearflow.load`: a checkpoint file, a local Hub folder or ``hf://USER/REPO[@REVISION]``."""
    return load_model(path, map_location)[0]


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HTF, InferenceOptions]:
    """`hearflow.checkpoint.load_model` of a checkpoint file, a Hub folder or an ``hf://`` name."""
    return model_from_checkpoint(read_any(path), path, map_location)


def read_any(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a checkpoint file (`load_checkpoint`), a Hub folder or an ``hf://`` name."""
    return read_hub_checkpoint(path) if is_hub_source(path) else load_checkpoint(path)


def read_hub_checkpoint(source: str | Path) -> dict[str, Any]:
    """A Hub folder (local, or fetched for ``hf://``) as hearflow's checkpoint dict (`hearflow.checkpoint`)."""
    folder = download(str(source)) if str(source).startswith(SCHEME) else Path(source)
    header = _read_header(folder / CONFIG)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise HearflowError(f"{folder}: no {WEIGHTS}; a hearflow Hub folder holds its weights there")
    try:
        state = _safetensors().torch.load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise HearflowError(f"cannot read {weights}: not a safetensors file or a damaged one ({_first_line(error)})") from None
    records = {key: value for key, value in header.items() if key not in ("format", "hearflow_version")}
    return {**records, "format": FORMAT, "hearflow_version": header.get("hearflow_version"), "state_dict": state}


def download(source: str) -> Path:
    """The local snapshot of ``hf://USER/REPO[@REVISION]`` (only the Hub folder's files)."""
    repo, revision = parse_repo(source)
    hub = _huggingface_hub()
    try:
        return Path(hub.snapshot_download(repo, revision=revision, allow_patterns=list(HUB_FILES)))
    except Exception as error:  # not found, offline without a cache, no access: one line
        raise HearflowError(f"cannot fetch {source} from the Hugging Face Hub: {_first_line(error)}") from None


def push(checkpoint: str | Path, repo: str, results: str | Path | None = None, private: bool = False,
         message: str | None = None, api: Any = None) -> str:
    """`hearflow push`: upload the Hub folder of ``checkpoint`` to ``repo`` (``USER/REPO``, created
    when missing); returns the repository's URL. api: a `huggingface_hub.HfApi` (default: a new one,
    logged in through ``HF_TOKEN`` or ``huggingface-cli login``)."""
    repo_id, revision = parse_repo(repo)
    if api is None:
        api = _huggingface_hub().HfApi()
    with tempfile.TemporaryDirectory(prefix="hearflow-push-") as folder:
        save_pretrained(checkpoint, folder, results=results, repo=repo_id)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                              commit_message=message or f"hearflow: upload {Path(checkpoint).name}")
        except Exception as error:  # no token, no permission, no network: one line
            raise HearflowError(f"cannot push {checkpoint} to {repo_id}: {_first_line(error)}") from None
    return str(url)


def _as_checkpoint(source: str | Path | HTF, inference: InferenceOptions | None) -> tuple[dict[str, Any], Path | None]:
    """(the checkpoint dict of a file or a model, the file or None)."""
    if isinstance(source, torch.nn.Module):
        options = (inference or InferenceOptions()).validate()
        return {"format": FORMAT, "config": source.config.to_dict(), "state_dict": source.state_dict(),
                "inference": dataclasses.asdict(options)}, None
    checkpoint = read_any(source)
    if checkpoint.get("format") != FORMAT:  # a released file: written in hearflow's format
        model, options = model_from_checkpoint(checkpoint, source)
        return _as_checkpoint(model, options)[0], Path(source)
    model_from_checkpoint(checkpoint, source)  # a checkpoint that does not load fails before anything is written
    return checkpoint, None if is_hub_source(source) else Path(source)


def _header(checkpoint: dict[str, Any], origin: Path | None) -> dict[str, Any]:
    """config.json: the config, inference options and the checkpoint's records that are JSON."""
    from hearflow import __version__

    header = {"format": HUB_FORMAT, "hearflow_version": __version__, "config": checkpoint["config"]}
    for key, value in checkpoint.items():
        if key in ("format", "hearflow_version", "config", "state_dict", *RESUME_ONLY):
            continue
        try:
            json_text(value)
        except (TypeError, HearflowError):
            continue  # tensors and the like: not a record the Hub folder keeps
        header[key] = value
    if origin is not None:
        header.setdefault("source", origin.name)
    return header


def _read_header(path: Path) -> dict[str, Any]:
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HearflowError(f"{path.parent}: no {CONFIG}; not a hearflow Hub folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HearflowError(f"cannot read {path}: {_first_line(error)}") from None
    except RecursionError:
        raise HearflowError(f"cannot read {path}: its JSON is nested too deeply to be a config") from None
    if not isinstance(header, dict) or header.get("format") != HUB_FORMAT:
        raise HearflowError(f"{path} is not a hearflow Hub config (its \"format\" is not {HUB_FORMAT!r})")
    if not isinstance(header.get("config"), dict):
        raise HearflowError(f"{path} has no model config: it cannot say which model its weights belong to")
    return header


def _read_results(path: str | Path) -> dict[str, Any]:
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HearflowError(f"cannot read results {path}: {_first_line(error)}") from None
    if not isinstance(table, dict):
        raise HearflowError(f"{path} does not hold evaluate's results (a JSON object)")
    return table


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HearflowError(f"the Hugging Face Hub needs huggingface_hub: {INSTALL}") from None
    return huggingface_hub


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise HearflowError(f"Hub folders keep their weights as safetensors: {INSTALL}") from None
    return safetensors


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
