"""The run folder of `hearflow train`: what a run reads back on resume and writes after each epoch.

``last.pt`` (everything a resume needs), ``best.pt`` (weights for evaluation),
``config.yaml``, ``metrics.csv`` (written after the checkpoints of its epoch) and the
TensorBoard events; `run_config_and_paths` checks a resume against the recorded run.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from hearflow.checkpoint import load_checkpoint, save_checkpoint
from hearflow.config import Config, differences
from hearflow.data.prepared import training_data
from hearflow.errors import HearflowError, option
from hearflow.io import csv_text, write_text
from hearflow.rng import rng_state

if TYPE_CHECKING:
    from hearflow.train import Trainer

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


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.yaml")  # their temporaries go at the start of a run
# Fields a resumed run may change: how long it runs and how it loads data.
RESUMABLE_CHANGES = ("train.epochs", "train.workers")


@dataclass
class RunPaths:
    """The data a run reads: prepared folders, validation annotations, an id list, training labels (or None)."""

    train_dir: str | None = None
    val_dir: str | None = None
    val_annotations: str | None = None
    train_ids: str | None = None
    train_labels: str | None = None

    @staticmethod
    def of(**paths: str | Path | None) -> "RunPaths":
        return RunPaths(**{name: None if value is None else str(value) for name, value in paths.items()})


@dataclass
class RunState:
    """What a resume restores besides weights and optimiser: where the run is, and its best epoch."""

    epoch: int = 0
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "score", "epoch"}


def run_config(run_dir: str | Path) -> Config:
    """The recorded config of the run in ``run_dir`` (its ``config.yaml``, else its ``last.pt``)."""
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        return Config.from_yaml(run_dir / "config.yaml")
    return Config.from_dict(last_checkpoint(run_dir)["config"])


def check_new_run(run_dir: Path) -> None:
    if (run_dir / "last.pt").exists():
        raise HearflowError(f"{run_dir} already holds a run (last.pt); continue it with "
                            f"{option('--resume', 'resume=True')}, or choose another {option('--out', 'out_dir')}")


def last_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "last.pt"
    if not path.exists():
        raise HearflowError(f"cannot resume: {path} does not exist")
    checkpoint = load_checkpoint(path)
    missing = [key for key in ("optimizer", "epoch", "global_step", "rng", "best", "run") if key not in checkpoint]
    if missing:
        raise HearflowError(f"cannot resume from {path}: it lacks {', '.join(missing)}")
    return checkpoint


def run_config_and_paths(
    config: Config | None, requested: RunPaths, checkpoint: dict[str, Any] | None, run_dir: Path
) -> tuple[Config, RunPaths]:
    """The run's config and data: the requested ones, or on resume the recorded ones (checked against them)."""
    if checkpoint is None:
        if config is None:
            raise HearflowError("train needs a config (or resume=True with a run folder)")
        config, paths = Config.from_dict(config.to_dict()), requested  # a private copy
    else:
        recorded = Config.from_dict(checkpoint["config"])
        if config is not None:
            changed = differences(recorded, config, ignore=RESUMABLE_CHANGES)
            if changed:
                raise HearflowError(f"resuming {run_dir} continues its recorded config, but {'; '.join(changed)}")
            recorded.train.epochs, recorded.train.workers = config.train.epochs, config.train.workers
        config = recorded
        saved = checkpoint["run"]
        paths = RunPaths(**{name: value if value is not None else saved.get(name)
                            for name, value in asdict(requested).items()})
    if paths.train_dir is None:
        raise HearflowError(f"no training data: pass {option('--train DIR', 'train_dir')} "
                            "(a folder made by `hearflow prepare`)")
    if (paths.val_dir is None) != (paths.val_annotations is None):
        raise HearflowError(f"validation needs both {option('--val DIR', 'val_dir')} and "
                            f"{option('--val-annotations PATH', 'val_annotations')}")
    return config.validate(), paths


def save_checkpoints(trainer: "Trainer", row: dict[str, Any]) -> None:
    """``best.pt`` (weights and where they come from) when the epoch is the best, then ``last.pt``."""
    state = trainer.state
    summary = {"epoch": state.epoch, "global_step": state.global_step, "best": state.best,
               "run": asdict(trainer.paths), "metrics": {key: row.get(key) for key in METRICS_COLUMNS},
               "training_data": training_data(trainer.train_data.folder)}
    if row["is_best"]:
        save_checkpoint(trainer.run_dir / "best.pt", trainer.model, **summary)
    save_checkpoint(trainer.run_dir / "last.pt", trainer.model, optimizer=trainer.optimizer.state_dict(),
                    scaler=trainer.scaler.state_dict(), rng=rng_state(), **summary)


def log_epoch(trainer: "Trainer", row: dict[str, Any], writer) -> None:
    """The epoch's row in ``metrics.csv`` (written after its checkpoints), TensorBoard and the console."""
    path = trainer.run_dir / "metrics.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as file:
            rows = [r for r in csv.DictReader(file) if int(r["epoch"]) < row["epoch"]]
    rows.append({key: _csv_value(row.get(key)) for key in METRICS_COLUMNS})
    write_text(path, csv_text(METRICS_COLUMNS, ([r[key] for key in METRICS_COLUMNS] for r in rows)))
    for key in ("train_loss", "samples_per_s", "val_ciou_at_0_5", "val_auc", "val_mean_ciou"):
        if row.get(key) is not None:
            writer.add_scalar(f"epoch/{key}", row[key], trainer.state.global_step)
    writer.flush()
    summary = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}"
    if trainer.validation is not None:
        summary += (f", val cIoU@0.5 {row['val_ciou_at_0_5']:.4f}, AUC {row['val_auc']:.4f},"
                    f" mean cIoU {row['val_mean_ciou']:.4f}")
    tqdm.write(summary + (" (best so far)" if row["is_best"] and trainer.validation is not None else ""))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value
