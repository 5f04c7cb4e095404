"""`hearflow train`: the training loop, in one process or many (DistributedDataParallel).

Shaped like torchvision's references: `build` makes everything a run needs (data,
model, optimiser; restored from ``last.pt`` on resume), `train_one_epoch` runs one
pass, `fit` loops over epochs with validation and checkpoints, and `train` is the
entry point the CLI calls.

One epoch = one pass over the training set in global batches of
``train.batch_size`` pairs. A step runs ``model.embed`` on this process's share and
the registered loss ``objective.loss`` (`hearflow.objective`) on the features of the
global batch. After each epoch: validation (cIoU@0.5, AUC, mean cIoU) when a
validation set is given, the checkpoints, a row of ``metrics.csv``, TensorBoard:

- ``RUN_DIR/last.pt``: everything a resume needs (weights, optimiser, grad scaler,
  epoch, global step, python/numpy/torch RNG states, best score, data paths);
- ``RUN_DIR/best.pt``: the weights of the epoch with the highest validation
  cIoU@0.5 (ties broken by AUC); without a validation set, of the epoch with the
  lowest mean training loss (no optimiser state: it is for evaluation);
- ``RUN_DIR/config.yaml``: the run's full configuration.

Under ``torchrun --nproc-per-node N`` each process reads ``batch_size / N`` pairs of
every global batch (a DistributedSampler over a prepared folder; its own part of
each epoch's stream over shards, `hearflow.data.loading`), features are gathered so that every
process computes the loss of the global batch, BatchNorm is synchronised, and rank 0
alone writes files and draws the progress bar: N processes train the model that one
process would train with the same global batch.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from hearflow import distributed
from hearflow.checkpoint import load_state
from hearflow.config import Config, machine_workers
from hearflow.data.loading import TrainingData
from hearflow.data.lists import read_ids
from hearflow.data.negatives import read_labels
from hearflow.errors import HearflowError, Problems, option
from hearflow.io import remove_stale_temporaries, write_text
from hearflow.model import HTF, build_model
from hearflow.objective import get_loss, global_batch_loss
from hearflow.rng import deterministic_algorithms, seed_everything, set_rng_state
from hearflow.scoring import AnnotatedSet
from hearflow.train.run_folder import (
    METRICS_COLUMNS,
    RESUMABLE_CHANGES,
    RUN_FILES,
    RunPaths,
    RunState,
    check_new_run,
    last_checkpoint,
    log_epoch,
    run_config,
    run_config_and_paths,
    save_checkpoints,
)


@dataclass
class Trainer:
    """Everything `train_one_epoch` and `fit` use; `build` makes one."""

    config: Config
    paths: RunPaths
    run_dir: Path
    context: distributed.Distributed
    model: HTF
    embedder: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_data: TrainingData
    validation: AnnotatedSet | None
    global_batch: int
    local_batch: int
    state: RunState


def train(
    config: Config | None,
    train_dir: str | Path | None,
    out_dir: str | Path,
    *,
    val_dir: str | Path | None = None,
    val_annotations: str | Path | None = None,
    train_ids: str | Path | None = None,
    train_labels: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    pretrained: bool = True,
    deterministic: bool = False,
    skip_missing: bool = False,
    progress: bool = True,
) -> HTF:
    """Train a model on a prepared folder; returns it (last epoch's weights, eval mode).

    config: the run's Config (`hearflow.config.resolve`). With ``resume``, the run in
    ``out_dir`` continues from ``last.pt`` with its recorded config: ``config`` may be
    None, or must equal the recorded one but for `RESUMABLE_CHANGES` (more epochs,
    other loader workers); data paths default to the run's. train_dir / val_dir:
    prepared folders; val_annotations: a VGG-SS JSON file or a folder of Flickr XML
    files; train_ids: a text file of ids (one per line) selecting the training samples;
    train_labels: annotations naming the training samples' classes, so off-screen
    negatives are of a class not in the frame (`hearflow.data.negatives.read_labels`).
    pretrained: pre-trained weights (``model.pretrained_weights``) for the encoders the
    config marks ``*_pretrained``. deterministic: ``torch.use_deterministic_algorithms``
    (bit-identical reruns on CPU). progress: draw the progress bar (rank 0 only).
    """
    context = distributed.setup(device)
    try:
        run_dir = Path(out_dir)
        checkpoint = last_checkpoint(run_dir) if resume else check_new_run(run_dir)
        requested = RunPaths.of(train_dir=train_dir, val_dir=val_dir, val_annotations=val_annotations,
                                train_ids=train_ids, train_labels=train_labels)
        config, paths = run_config_and_paths(config, requested, checkpoint, run_dir)
        trainer = build(config, paths, run_dir, context, pretrained=pretrained and checkpoint is None,
                        skip_missing=skip_missing, checkpoint=checkpoint)
        lines = [trainer.train_data.left_out_line("training")]
        lines += trainer.validation.warning_lines() if trainer.validation is not None else []
        for line in filter(None, lines if context.is_main else []):
            tqdm.write(f"hearflow: warning: {line}", file=sys.stderr)
        # the lock comes after every check, so a run refused by them leaves no folder behind
        with deterministic_algorithms(deterministic), distributed.lock_on_main(context, run_dir / "train.lock"):
            if context.is_main:
                remove_stale_temporaries(run_dir, RUN_FILES)
            return fit(trainer, progress)
    finally:
        distributed.teardown(context)


class Embedder(nn.Module):
    """``model.embed`` as a module's forward: what DistributedDataParallel wraps in training."""

    def __init__(self, model: HTF) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, flow, spectrogram):
        return self.model.embed(image, flow, spectrogram)


def training_embedder(model: HTF, context: distributed.Distributed) -> nn.Module:
    """`Embedder` of ``model`` (already on ``context.device``) as a training step runs it:
    with DistributedDataParallel when there are several processes, and synchronised BatchNorm
    unless ``objective.loss_batch`` is ``per-process`` (each process's batch its own, as the
    EZ-VSL / FNAC / SLAVC code trains)."""
    embedder = Embedder(model)
    if not context.enabled:
        return embedder
    if model.config.objective.loss_batch == "global":
        distributed.synchronize_batchnorm(model, context.device)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(embedder, device_ids=device_ids)


def build(
    config: Config,
    paths: RunPaths,
    run_dir: Path,
    context: distributed.Distributed,
    *,
    pretrained: bool,
    skip_missing: bool = False,
    checkpoint: dict[str, Any] | None = None,
) -> Trainer:
    """Data, model, optimiser and run state, restored from ``checkpoint`` (a ``last.pt``) when given.
    What would stop the run later (data, batch, loss, workers, weights, folder) is checked first
    and reported in one HearflowError."""
    problems = Problems("training cannot start")
    problems.attempt(get_loss, config.objective.loss)
    seed_everything(config.train.seed)
    ids = None if paths.train_ids is None else problems.attempt(read_ids, paths.train_ids)
    labels = None if paths.train_labels is None else problems.attempt(read_labels, paths.train_labels)
    train_data = problems.attempt(TrainingData, paths.train_dir, config, ids, skip_missing, context.rank,
                                  context.world_size, labels)
    validation = None
    if paths.val_dir is not None:
        validation = problems.attempt(AnnotatedSet, paths.val_dir, paths.val_annotations, config,
                                      skip_missing=skip_missing)
    _check_settings(problems, config, None if train_data is None else len(train_data), context, run_dir)
    model = problems.attempt(build_model, config=config, pretrained=pretrained)
    problems.raise_any()
    global_batch, local_batch = config.train.batch_size, config.train.batch_size // context.world_size
    if checkpoint is not None:
        load_state(model, checkpoint["state_dict"], run_dir / "last.pt")
    model.to(context.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    amp_dtype = amp_dtype_for(config.train.amp, context.device)
    scaler = torch.amp.GradScaler(context.device.type, enabled=amp_dtype == torch.float16)
    state = RunState(best={"metric": "val_ciou_at_0_5" if validation else "train_loss", "score": None, "epoch": 0})
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = RunState(int(checkpoint["epoch"]), int(checkpoint["global_step"]), dict(checkpoint["best"]))
        set_rng_state(checkpoint["rng"])
    return Trainer(config, paths, run_dir, context, model, training_embedder(model, context), optimizer, scaler,
                   amp_dtype, train_data, validation, global_batch, local_batch, state)


def train_one_epoch(trainer: Trainer, epoch: int, writer, progress: bool = True) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's row of ``metrics.csv`` (without validation)."""
    config, device, state = trainer.config, trainer.context.device, trainer.state
    trainer.model.train()
    bar = tqdm(_loader(trainer, epoch), desc=f"epoch {epoch}/{config.train.epochs}", unit="batch",
               disable=not (trainer.context.is_main and progress), dynamic_ncols=True, leave=True)
    total_loss, steps, start = 0.0, 0, time.perf_counter()
    for step, batch in enumerate(bar, start=1):
        inputs = trainer.train_data.inputs(batch, device)
        negative = trainer.train_data.negative_spectrogram(batch, device)
        loss = global_batch_loss(trainer.embedder, trainer.model, inputs, config.objective, trainer.amp_dtype,
                                 negative, epoch=epoch)
        value = loss.item()
        if not math.isfinite(value):
            raise HearflowError(_nan_message(trainer, value, epoch, step, list(batch["id"]), inputs))
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        state.global_step += 1
        total_loss += value
        steps += 1
        rate = steps * trainer.global_batch / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.1f}")
        if writer is not None:
            writer.add_scalar("train/loss", value, state.global_step)
    bar.close()
    if steps == 0:
        raise HearflowError("the training loader produced no batch")
    return {
        "epoch": epoch,
        "global_step": state.global_step,
        "train_loss": total_loss / steps,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "samples_per_s": steps * trainer.global_batch / max(time.perf_counter() - start, 1e-9),
    }


def fit(trainer: Trainer, progress: bool = True) -> HTF:
    """Train from the state's epoch to ``train.epochs``, validating and saving after each; returns the model."""
    config, context, state = trainer.config, trainer.context, trainer.state
    if state.epoch >= config.train.epochs:
        if context.is_main:
            tqdm.write(f"{trainer.run_dir} has trained {state.epoch} of {config.train.epochs} epochs: nothing to do "
                       f"({option('--epochs N', 'train.epochs=N')} continues it to N)")
        return trainer.model.eval()
    writer = None
    if context.is_main:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(trainer.run_dir / "config.yaml", config.to_yaml())
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(trainer.run_dir), purge_step=state.global_step + 1 if state.epoch else None)
    try:
        for epoch in range(state.epoch + 1, config.train.epochs + 1):
            row = train_one_epoch(trainer, epoch, writer, progress)
            if trainer.validation is not None:
                predictions = trainer.validation.predict(trainer.model, context, trainer.local_batch,
                                                         config.train.workers, progress=progress)
                _, results = trainer.validation.score(predictions)
                row.update({f"val_{key}": results[key] for key in ("ciou_at_0_5", "auc", "mean_ciou")})
            row["is_best"] = _is_best(state, row, config.train.best_ties)
            state.epoch = epoch
            if context.is_main:
                save_checkpoints(trainer, row)
                log_epoch(trainer, row, writer)
    finally:
        if writer is not None:
            writer.close()
    return trainer.model.eval()


# -- set-up ---------------------------------------------------------------------------








def _check_settings(problems: Problems, config: Config, n_samples: int | None, context: distributed.Distributed,
                    run_dir: Path) -> None:
    """Add what in the batch size, the loader workers and the run folder stops a run (``n_samples``: None if
    unknown); warn (rank 0) of more loader workers than CPUs."""
    batch, workers, cpus = config.train.batch_size, config.train.workers, machine_workers()
    if batch < 2:
        problems.add(f"train.batch_size is {batch}: the contrastive loss needs at least 2 pairs per batch "
                     "(each clip's negatives are the other clips' sounds); use --batch-size 2 or more")
    elif batch % context.world_size:
        problems.add(f"train.batch_size {batch} is the global batch and must be a multiple of the "
                     f"{context.world_size} processes")
    elif n_samples is not None and n_samples < batch:
        problems.add(f"the training set has {n_samples} samples, fewer than one batch of {batch} "
                     f"(train.batch_size); use --batch-size {n_samples} or less")
    if workers < 0:
        problems.add(f"train.workers is {workers}; use --workers 0 (load in the training process) or more")
    elif workers > cpus and context.is_main:
        tqdm.write(f"hearflow: warning: train.workers is {workers}, more than the {cpus} CPUs this process may "
                   f"use, so loading competes with training (--workers {cpus} is the default)", file=sys.stderr)
    if run_dir.exists() and not run_dir.is_dir():
        problems.add(f"{run_dir} is a file, not a folder for the run; choose another {option('--out', 'out_dir')}")


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on ``device``; None = fp32 (always on CPU)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise HearflowError(f"train.amp is {amp!r}; choose auto, bf16, fp16 or off")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


# -- the loop's parts -----------------------------------------------------------------


def _loader(trainer: Trainer, epoch: int):
    """The epoch's batches: an iterator of the training data's DataLoader, its workers started."""
    with warnings.catch_warnings():  # more workers than CPUs: `_check_settings` said it once
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        return iter(trainer.train_data.loader(epoch, trainer.local_batch, trainer.config.train.workers,
                                              pin_memory=trainer.context.device.type == "cuda"))


def _nan_message(trainer: Trainer, value: float, epoch: int, step: int, ids: list[str],
                 inputs: tuple[torch.Tensor, ...]) -> str:
    """Where the loss stopped being finite, what was kept, and the likely cause: samples whose
    inputs hold NaN or inf (named), else the optimisation."""
    state = trainer.state
    kept = (f"{trainer.run_dir / 'last.pt'} (epoch {state.epoch}) is left as it was" if state.epoch
            else "no checkpoint was written yet")
    bad = [sample_id for index, sample_id in enumerate(ids)
           if not all(bool(torch.isfinite(tensor[index]).all()) for tensor in inputs)]
    if bad:
        cause = (f"the inputs of sample(s) {', '.join(map(repr, bad[:5]))} of {trainer.paths.train_dir} hold NaN or "
                 "infinite values: prepare them again or leave them out (--train-ids)")
    else:
        shown = ", ".join(map(repr, ids[:4])) + (", ..." if len(ids) > 4 else "")
        cause = f"the batch's inputs ({shown}) are finite: lower --lr, or try --set train.amp=off"
    return (f"training stopped: the loss is {value} at epoch {epoch}, step {step} (global step "
            f"{state.global_step + 1}); {kept}; {cause}")


def _is_best(state: RunState, row: dict[str, Any], ties: str = "auc") -> bool:
    """Whether the epoch of ``row`` beats the best so far (updating ``state.best``).

    With validation: a higher cIoU@0.5; among epochs tied on it, ``ties`` (train.best_ties)
    ``"auc"`` takes the higher AUC, ``"first"`` keeps the earlier epoch (the release's rule).
    """
    if state.best["metric"] == "train_loss":
        score = row["train_loss"]
        better = state.best["score"] is None or score < state.best["score"]
    else:
        score = (row["val_ciou_at_0_5"], row["val_auc"])
        compared = 2 if ties == "auc" else 1
        better = state.best["score"] is None or tuple(score)[:compared] > tuple(state.best["score"])[:compared]
    if better:
        state.best = {"metric": state.best["metric"], "score": score, "epoch": row["epoch"]}
    return better


# -- files (rank 0) -------------------------------------------------------------------------


__all__ = ["METRICS_COLUMNS", "RESUMABLE_CHANGES", "RunPaths", "RunState", "Trainer", "amp_dtype_for", "build", "fit",
           "run_config", "train", "train_one_epoch", "training_embedder"]
