"""The model card (README.md) of a Hub folder: what the model is, how to use it, how well it
localizes (evaluate's results.json) and the command that trained it."""

from __future__ import annotations

import shlex
from typing import Any

# results.json key -> the table's row label, in the order evaluate prints them
RESULT_ROWS = (("n", "samples"), ("ciou_at_0_5", "cIoU@0.5"), ("auc", "AUC"), ("mean_ciou", "mean cIoU"),
               ("n_no_source", "no-source samples"), ("ap", "AP"), ("max_f1", "max-F1"))
TRAIN_FLAGS = (("train_dir", "--train"), ("train_ids", "--train-ids"), ("train_labels", "--train-labels"),
               ("val_dir", "--val"), ("val_annotations", "--val-annotations"))


def model_card(header: dict[str, Any], results: dict[str, Any] | None, repo: str) -> str:
    """README.md for a Hub folder whose config.json is ``header``, shared as ``repo`` (``USER/REPO``)."""
    config = header["config"]
    synthetic = (header.get("training_data") or {}).get("synthetic") is True
    lines = ["---", "library_name: hearflow", "tags:", "- sound-source-localization", "- audio-visual",
             "- hear-the-flow", "---", "", f"# {repo}", "",
             f"A Hear The Flow (HTF, WACV 2023) sound-source localization model, preset "
             f"`{config.get('preset', 'htf')}`, saved by hearflow {header.get('hearflow_version', '?')}.", ""]
    if synthetic:
        lines += ["**Trained on synthetic clips only** (`hearflow synth` / `hearflow demo`): on real videos "
                  "its heatmaps mean little.", ""]
    lines += ["## Use", "", "```bash", 'pip install "hearflow[hub]"',
              f"hearflow localize clip.mp4 --checkpoint hf://{repo} --out out/", "```", "", "```python",
              "import hearflow", "", f'model = hearflow.load("hf://{repo}")', "```", "",
              "Loading reads `config.json` and `model.safetensors` only: no code from this repository runs.", ""]
    lines += ["## Evaluation", "", *_results_lines(results), ""]
    lines += ["## Training", "", *_training_lines(header), ""]
    calibration = header.get("calibration")
    if isinstance(calibration, dict) and "threshold" in calibration:
        lines += ["## Calibration", "",
                  f"A step is `sounding` when its confidence ({calibration.get('confidence', 'map_max')}) is above "
                  f"{calibration['threshold']:.4f}, chosen by `hearflow calibrate` on {calibration.get('data', '?')} "
                  f"(detection F1 {calibration.get('f1', float('nan')):.4f}, AUROC "
                  f"{calibration.get('auroc', float('nan')):.4f}).", ""]
    return "\n".join(lines)


def _results_lines(results: dict[str, Any] | None) -> list[str]:
    """The evaluation table of ``hearflow evaluate --out`` results, or a line saying there is none."""
    if not results:
        return ["Not evaluated: no results.json was given (`hearflow push CHECKPOINT USER/REPO --results "
                "results.json`, the file `hearflow evaluate --out` writes)."]
    rows = [(label, _cell(results[key])) for key, label in RESULT_ROWS if results.get(key) is not None]
    lines = [f"`hearflow evaluate` on {results.get('benchmark', 'an annotated test set')} "
             f"({results.get('data', '?')}):", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    negatives = results.get("negatives")
    if isinstance(negatives, dict) and negatives:
        lines += ["", "Negative audio (`--negatives`) results are in `results.json`."]
    return lines


def _training_lines(header: dict[str, Any]) -> list[str]:
    """The command that trained the model, from the run its checkpoint records."""
    run = header.get("run")
    if not isinstance(run, dict) or not run.get("train_dir"):
        return ["Not recorded: this checkpoint does not say how it was trained (a released checkpoint, or a "
                "model saved from Python). `train-config.yaml` is its config."]
    command = ["hearflow", "train", "--config", "train-config.yaml"]
    for key, flag in TRAIN_FLAGS:
        if run.get(key):
            command += [flag, str(run[key])]
    command += ["--out", "RUN_DIR"]
    epoch = header.get("epoch")
    trained = f" Recorded after epoch {epoch}" + (f" (step {header['global_step']})." if "global_step" in header
                                                  else ".") if epoch is not None else ""
    return ["The command that trained it (`train-config.yaml`, in this repository, is the whole resolved config; "
            "the folders are the training machine's):", "", "```bash", shlex.join(command), "```", "",
            f"Trained on `{(header.get('training_data') or {}).get('train', run['train_dir'])}`.{trained}"]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
