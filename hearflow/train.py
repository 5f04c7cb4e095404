"""`hearflow train`: the training loop, in one process or many (DistributedDataParallel).

One epoch = one pass over the training set in global batches of
``train.batch_size`` pairs; the trimap contrastive loss compares every image with
every audio clip of the global batch. After each epoch: validation (cIoU@0.5, AUC,
mean cIoU) when a validation set is given, one row in ``metrics.csv``, TensorBoard
scalars, and the checkpoints:

- ``RUN_DIR/last.pt``: everything a resume needs (weights, optimiser, grad scaler,
  epoch, global step, python/numpy/torch RNG states, best score, data paths);
- ``RUN_DIR/best.pt``: the epoch with the highest validation cIoU@0.5 (ties broken
  by AUC); without a validation set, the epoch with the lowest mean training loss;
- ``RUN_DIR/config.yaml``: the run's full configuration.

Under ``torchrun --nproc-per-node N`` each process reads ``batch_size / N`` pairs of
every global batch (a DistributedSampler), features are gathered so that every
process computes the loss of the global batch, BatchNorm is synchronised, and rank 0
alone writes files and draws the progress bar: N processes train the model that one
process would train with the same global batch.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from hearflow import distributed
from hearflow.checkpoint import load_checkpoint, load_state, save_checkpoint
from hearflow.config import Config, ObjectiveConfig, apply_overrides, preset_config
from hearflow.data.dataset import PreparedDataset
from hearflow.errors import HearflowError
from hearflow.evaluate import ValidationSet, write_text
from hearflow.model import HTF, build_model
from hearflow.objective import lvs_loss
from hearflow.prepare import read_ids

METRICS_COLUMNS = (
    "epoch",
    "global_step",
    "train_loss",
    "lr",
    "samples_per_s",
    "val_ciou_at_0_5",
    "val_auc",
    "val_mean_ciou",
    "is_best",
)

# Command-line flags that set a config field (they override the config file and --set).
FLAG_FIELDS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "workers": "train.workers",
    "seed": "train.seed",
}


def training_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    **flags: Any,
) -> Config:
    """The run's Config, each source overriding the previous one.

    preset (default: the config file's ``preset`` key, else ``htf``) < the config
    file's values < ``overrides`` (``--set KEY=VALUE``) < ``flags`` that are not None
    (``epochs``, ``batch_size``, ``lr``, ``workers``, ``seed``).
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise HearflowError(f"cannot read config file {config_file}: {error}") from error
        if not isinstance(file_values, dict):
            raise HearflowError(f"config file {config_file} does not hold a mapping of config sections")
    file_preset = file_values.pop("preset", None)
    config = preset_config(preset or file_preset or "htf")
    try:
        config = Config.from_dict({"preset": config.preset, **file_values}) if file_values else config
    except HearflowError as error:
        raise HearflowError(f"config file {config_file}: {error}") from error
    apply_overrides(config, dict(overrides or {}))
    apply_overrides(config, {FLAG_FIELDS[name]: value for name, value in flags.items() if value is not None})
    return config.validate()


def train(
    config: Config | None,
    train_dir: str | Path | None,
    out_dir: str | Path,
    val_dir: str | Path | None = None,
    val_annotations: str | Path | None = None,
    *,
    train_ids: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    epochs: int | None = None,
    workers: int | None = None,
    pretrained: bool = True,
    deterministic: bool = False,
    skip_missing: bool = False,
    progress: bool = True,
) -> HTF:
    """Train a model on a prepared folder; returns it (last epoch's weights, eval mode).

    config: the run's Config (see `training_config`); ignored with ``resume``, which
    takes the run's own. train_dir / val_dir: prepared folders; val_annotations: a
    VGG-SS JSON file or a folder of Flickr XML files; train_ids: a text file of ids
    (one per line) selecting the training samples; out_dir: RUN_DIR. resume: continue
    RUN_DIR from ``last.pt`` (data paths default to the run's; ``epochs`` may extend
    it; ``workers`` may change). pretrained: ImageNet weights for the encoders the
    config marks ``*_pretrained`` (downloaded by torchvision once). deterministic:
    ``torch.use_deterministic_algorithms(True)`` (bit-identical reruns on CPU).
    progress: draw the per-epoch progress bar (rank 0 only).
    """
    context = distributed.setup(device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        return _Run(
            context, config, train_dir, out_dir, val_dir, val_annotations, train_ids,
            resume, epochs, workers, pretrained, skip_missing, progress,
        ).fit()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.teardown(context)


class Features(nn.Module):
    """The part of the model a training step runs: ``(image, flow, spectrogram) ->
    (visual maps B x c x h x w, audio vectors B x c)``, both L2-normalised.

    This is what DistributedDataParallel wraps; the similarity maps and the loss are
    computed from the features of the global batch (`global_batch_loss`).
    """

    def __init__(self, model: HTF) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, flow, spectrogram):
        return self.model.visual_map(image, flow), self.model.audnet(spectrogram)


def training_features(model: HTF, context: distributed.Distributed) -> nn.Module:
    """`Features` of ``model`` (already on ``context.device``) as a training step runs them:
    with synchronised BatchNorm and DistributedDataParallel when there are several processes."""
    features = Features(model)
    if not context.enabled:
        return features
    distributed.synchronize_batchnorm(model, context.device)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(features, device_ids=device_ids)


def global_batch_loss(
    features: nn.Module,
    image: torch.Tensor,
    flow: torch.Tensor,
    spectrogram: torch.Tensor,
    objective: ObjectiveConfig,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The trimap contrastive loss of the global batch, the same scalar on every process.

    Each process passes its share of the batch; visual maps and audio vectors of all
    processes are gathered (in rank order, gradients flowing back to their owner), so
    every image is compared with every audio clip of the global batch. The encoders
    run under autocast with ``amp_dtype`` (None: the inputs' dtype); similarities and
    the loss are computed in float32 (or float64 for float64 features).
    """
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        visual, audio = features(image, flow, spectrogram)
    precision = torch.promote_types(visual.dtype, torch.float32)
    visual = distributed.gather_with_grad(visual.to(precision))
    audio = distributed.gather_with_grad(audio.to(precision))
    cross_similarity = torch.einsum("ichw,jc->ijhw", visual, audio)
    return lvs_loss(cross_similarity, objective.eps_p, objective.eps_n, objective.tau, objective.temperature)


class _Run:
    """The state of one training run; `fit` runs it. Not part of the public API."""

    def __init__(
        self, context, config, train_dir, out_dir, val_dir, val_annotations, train_ids,
        resume, epochs, workers, pretrained, skip_missing, progress,
    ) -> None:
        self.context = context
        self.progress = progress
        self.run_dir = Path(out_dir)
        self.last_path = self.run_dir / "last.pt"
        self.best_path = self.run_dir / "best.pt"
        state = self._resume_state(resume)
        if state is not None:
            config = Config.from_dict(state["config"])
            paths = state["run"]
            train_dir = train_dir or paths["train_dir"]
            val_dir = val_dir or paths["val_dir"]
            val_annotations = val_annotations or paths["val_annotations"]
            train_ids = train_ids or paths["train_ids"]
        elif config is None:
            raise HearflowError("train needs a config (or resume=True with a run folder)")
        config = Config.from_dict(config.to_dict())  # a private copy
        if epochs is not None:
            config.train.epochs = epochs
        if workers is not None:
            config.train.workers = workers
        self.config = config.validate()
        if train_dir is None:
            raise HearflowError("no training data: pass --train DIR (a folder made by `hearflow prepare`)")
        if (val_dir is None) != (val_annotations is None):
            raise HearflowError("validation needs both --val DIR and --val-annotations PATH")
        self.paths = {
            "train_dir": str(train_dir),
            "val_dir": None if val_dir is None else str(val_dir),
            "val_annotations": None if val_annotations is None else str(val_annotations),
            "train_ids": None if train_ids is None else str(train_ids),
        }
        _seed_everything(self.config.train.seed)

        device = context.device
        ids = None if train_ids is None else read_ids(train_ids)
        self.train_set = PreparedDataset(train_dir, self.config, train=True, ids=ids, skip_missing=skip_missing)
        self.validation = None
        if val_dir is not None:
            self.validation = ValidationSet(val_dir, val_annotations, self.config, skip_missing=skip_missing)
        self.global_batch, self.local_batch = _batch_sizes(
            self.config.train.batch_size, len(self.train_set), context.world_size
        )
        self.sampler = DistributedSampler(
            self.train_set, num_replicas=context.world_size, rank=context.rank,
            shuffle=True, seed=self.config.train.seed,
        )

        self.model = build_model(config=self.config, pretrained=pretrained and state is None)
        if state is not None:
            load_state(self.model, state["state_dict"], self.last_path)
        self.model.to(device)
        self.features = training_features(self.model, context)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            trainable, lr=self.config.train.lr, weight_decay=self.config.train.weight_decay
        )
        self.amp_dtype = amp_dtype_for(self.config.train.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.global_step = 0
        self.best = {"metric": "val_ciou_at_0_5" if self.validation else "train_loss", "score": None, "epoch": 0}
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch = int(state["epoch"])
            self.global_step = int(state["global_step"])
            self.best = dict(state["best"])
            _set_rng_state(state["rng"])

    def _resume_state(self, resume: bool) -> dict | None:
        if not resume:
            if self.last_path.exists():
                raise HearflowError(
                    f"{self.run_dir} already holds a run ({self.last_path.name}); "
                    "continue it with --resume, or choose another --out"
                )
            return None
        if not self.last_path.exists():
            raise HearflowError(f"cannot resume: {self.last_path} does not exist")
        state = load_checkpoint(self.last_path)
        missing = [key for key in ("optimizer", "epoch", "global_step", "rng", "best", "run") if key not in state]
        if missing:
            raise HearflowError(f"cannot resume from {self.last_path}: it lacks {', '.join(missing)}")
        return state

    # -- the loop ---------------------------------------------------------------------

    def fit(self) -> HTF:
        context, config = self.context, self.config
        writer = None
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir), purge_step=self.global_step + 1 if self.epoch else None)
        try:
            for epoch in range(self.epoch + 1, config.train.epochs + 1):
                row = self._train_epoch(epoch, writer)
                if self.validation is not None:
                    row.update(self.validation.score(self.model, self.context, self.local_batch))
                row["is_best"] = self._is_best(row)
                self.epoch = epoch
                if context.is_main:
                    self._log_epoch(row, writer)
                    self._save_checkpoints(row)
        finally:
            if writer is not None:
                writer.close()
        return self.model.eval()

    def _loader(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        workers = self.config.train.workers
        return DataLoader(
            self.train_set,
            batch_size=self.local_batch,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.context.device.type == "cuda",
            drop_last=True,
        )

    def _train_epoch(self, epoch: int, writer) -> dict[str, Any]:
        config, device = self.config, self.context.device
        self.model.train()
        loader = self._loader(epoch)
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.train.epochs}", unit="batch",
            disable=not (self.context.is_main and self.progress), dynamic_ncols=True, leave=True,
        )
        total_loss, steps, samples, start = 0.0, 0, 0, time.perf_counter()
        for step, batch in enumerate(bar, start=1):
            image = batch["image"].to(device, non_blocking=True)
            flow = batch["flow"].to(device, non_blocking=True)
            spec = batch["spectrogram"].to(device, non_blocking=True)
            loss = global_batch_loss(self.features, image, flow, spec, config.objective, self.amp_dtype)
            value = loss.item()
            if not math.isfinite(value):
                raise HearflowError(
                    f"training stopped: the loss is {value} at epoch {epoch}, step {step} "
                    f"(global step {self.global_step + 1}); "
                    + (
                        f"{self.last_path} (epoch {self.epoch}) is left as it was"
                        if self.epoch
                        else "no checkpoint was written yet"
                    )
                    + " (lower --lr, or try --set train.amp=off)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            total_loss += value
            steps += 1
            samples += self.global_batch
            rate = samples / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.1f}")
            if writer is not None:
                writer.add_scalar("train/loss", value, self.global_step)
        bar.close()
        if steps == 0:
            raise HearflowError("the training loader produced no batch")
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "train_loss": total_loss / steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": samples / max(time.perf_counter() - start, 1e-9),
        }

    def _is_best(self, row: dict[str, Any]) -> bool:
        if self.validation is not None:
            score = (row["val_ciou_at_0_5"], row["val_auc"])
            better = self.best["score"] is None or tuple(score) > tuple(self.best["score"])
        else:
            score = row["train_loss"]
            better = self.best["score"] is None or score < self.best["score"]
        if better:
            self.best = {"metric": self.best["metric"], "score": score, "epoch": row["epoch"]}
        return better

    # -- files (rank 0) -----------------------------------------------------------------

    def _log_epoch(self, row: dict[str, Any], writer) -> None:
        path = self.run_dir / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as file:
                rows = [r for r in csv.DictReader(file) if int(r["epoch"]) < row["epoch"]]
        rows.append({key: _csv_value(row.get(key)) for key in METRICS_COLUMNS})
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        table.writeheader()
        table.writerows(rows)
        write_text(path, text.getvalue())
        for key in ("train_loss", "samples_per_s", "val_ciou_at_0_5", "val_auc", "val_mean_ciou"):
            if row.get(key) is not None:
                writer.add_scalar(f"epoch/{key}", row[key], self.global_step)
        writer.flush()
        summary = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}"
        if self.validation is not None:
            summary += (
                f", val cIoU@0.5 {row['val_ciou_at_0_5']:.4f}, AUC {row['val_auc']:.4f},"
                f" mean cIoU {row['val_mean_ciou']:.4f}"
            )
        tqdm.write(summary + (" (best)" if row["is_best"] else ""))

    def _save_checkpoints(self, row: dict[str, Any]) -> None:
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": _rng_state(),
            "best": self.best,
            "run": self.paths,
            "metrics": {key: row.get(key) for key in METRICS_COLUMNS},
        }
        if row["is_best"]:
            save_checkpoint(self.best_path, self.model, **extra)
        save_checkpoint(self.last_path, self.model, **extra)


def _batch_sizes(batch_size: int, n_samples: int, world_size: int) -> tuple[int, int]:
    """(global, per-process) batch; the global batch must split evenly over processes."""
    if batch_size % world_size:
        raise HearflowError(
            f"train.batch_size {batch_size} is the global batch and must be a multiple of the "
            f"{world_size} processes"
        )
    if n_samples < batch_size:
        raise HearflowError(
            f"the training set has {n_samples} samples, fewer than one batch of {batch_size}; "
            "lower --batch-size"
        )
    return batch_size, batch_size // world_size


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on ``device``; None = fp32 (always on CPU)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise HearflowError(f"train.amp is {amp!r}; choose auto, bf16, fp16 or off")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states, as checkpoint-safe values."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((
        "MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
        numpy["has_gauss"], numpy["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value
