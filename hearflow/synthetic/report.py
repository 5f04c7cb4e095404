"""The demo's outputs for people: the console table, report.md and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hearflow.data.prepared import PreparedFolder
from hearflow.io import write_png
from hearflow.metrics import heatmap
from hearflow.overlay import draw_box, overlay_heatmap
from hearflow.synthetic.lab import HTF, LATE_FUSION_ALPHA, LVS, METHOD_LABELS, SUBSETS, DemoData, source_moves

FIGURE_CLIPS = 6  # test clips in the figure: the first moving-source and still-source ones


FIGURE_CELL = 160  # pixels per figure cell


def format_table(methods: dict[str, dict[str, Any]]) -> str:
    """The printed table: one row per method, overall metrics and the subsets' mean cIoU / pick rate."""
    header = f"{'method':<30} {'cIoU@0.5':>8} {'AUC':>6} {'mean cIoU':>9} {'pick':>6} {'moving':>13} {'still':>13}"
    lines = [header, "-" * len(header)]
    for name, metrics in methods.items():
        cells = [f"{metrics['ciou_at_0_5']:>8.3f}", f"{metrics['auc']:>6.3f}", f"{metrics['mean_ciou']:>9.3f}",
                 f"{_number(metrics['pick_rate']):>6}"]
        for subset in ("source_moves", "source_still"):
            values = metrics["subsets"].get(subset, {})
            cells.append(f"{_number(values.get('mean_ciou')):>6}/{_number(values.get('pick_rate')):>6}")
        lines.append(f"{METHOD_LABELS.get(name, name):<30} " + " ".join(cells))
    lines.append("moving / still: mean cIoU / pick rate on clips whose sounding object moves / stands still")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_markdown(
    report: dict[str, Any],
    timings: dict[str, float],
    checkpoints: dict[str, Path],
    quick: bool,
    out: Path,
    example_id: str,
) -> str:
    """report.md: what ran, the table (overall and per subset), the figure, how to reuse the checkpoints."""
    command = f"hearflow demo --out {out}{' --quick' if quick else ''} --seed {report['seed']}"
    lines = [
        "# hearflow demo",
        "",
        f"`{command}`: {report['train_clips']} synthetic training clips, {report['test_clips']} test clips, "
        f"{report['seconds']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).",
        "",
        "| method | cIoU@0.5 | AUC | mean cIoU | pick rate |",
        "|---|---|---|---|---|",
    ]
    for name, metrics in report["methods"].items():
        lines.append(
            f"| {METHOD_LABELS[name]} | {metrics['ciou_at_0_5']:.3f} | {metrics['auc']:.3f} | "
            f"{metrics['mean_ciou']:.3f} | {_number(metrics['pick_rate'])} |"
        )
    subsets = [name for name in SUBSETS if any(name in m["subsets"] for m in report["methods"].values())]
    lines += ["", "Per subset (mean cIoU / pick rate; n = clips):", ""]
    counts = {name: next(m["subsets"][name]["n"] for m in report["methods"].values() if name in m["subsets"]) for name in subsets}
    lines.append("| method | " + " | ".join(f"{name} (n={counts[name]})" for name in subsets) + " |")
    lines.append("|---|" + "---|" * len(subsets))
    for name, metrics in report["methods"].items():
        cells = []
        for subset in subsets:
            values = metrics["subsets"].get(subset, {})
            cells.append(f"{_number(values.get('mean_ciou'))} / {_number(values.get('pick_rate'))}")
        lines.append(f"| {METHOD_LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The pick rate is the share of clips whose map is higher, on average, inside the sounding "
        "object's box than inside every silent object's box.",
        "",
        "![test clips: frame with the sounding object's box, optical flow, LVS and HTF heatmaps](figure.png)",
        "",
        "Figure: the first test clips whose sounding object moves, then the first whose sounding "
        "object stands still (not chosen by score). Rows: key frame with the ground-truth box, "
        "optical flow (hue = direction, brightness = speed), LVS heatmap, HTF heatmap.",
        "",
        "Checkpoints (usable as they are):",
        "",
        "```bash",
        f"hearflow evaluate --checkpoint {checkpoints[HTF]} --data {out / 'prepared' / 'test'} "
        f"--annotations {out / 'synth' / 'test' / 'annotations.json'}",
        f"hearflow evaluate --checkpoint {checkpoints[LVS]} --flow-fusion {LATE_FUSION_ALPHA} "
        f"--data {out / 'prepared' / 'test'} --annotations {out / 'synth' / 'test' / 'annotations.json'}",
        f"hearflow localize {out / 'synth' / 'test' / 'videos'}/{example_id}.mp4 "
        f"--checkpoint {checkpoints[HTF]} --out {out / 'localize'}",
        "```",
        "",
    ]
    return "\n".join(lines)


def flow_colors(flow: np.ndarray) -> np.ndarray:
    """Colour a flow field ``H x W x 2`` (dx, dy pixels): hue = direction, brightness = speed.

    Brightness is scaled by the field's own largest speed (a still field is black).
    Returns RGB uint8 H x W x 3.
    """
    dx, dy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    magnitude, angle = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    peak = float(magnitude.max())
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / peak * 255, 0, 255).astype(np.uint8) if peak > 0 else 0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def figure_ids(test_clips: dict[str, dict[str, Any]], count: int = FIGURE_CLIPS) -> list[str]:
    """The first ``count - count // 3`` moving-source clips, then the first still-source ones."""
    moving = [i for i, record in test_clips.items() if source_moves(record) is True]
    still = [i for i, record in test_clips.items() if source_moves(record) is False]
    take_still = min(len(still), count // 3)
    return moving[: count - take_still] + still[:take_still]


def write_figure(path: Path, data: DemoData, maps: dict[str, Any]) -> None:
    """The figure (like the paper's Figure 3): one column per clip; rows frame + box, flow, LVS, HTF."""
    folder = PreparedFolder(data.test_dir)
    rows = {name: dict(zip(maps[name].ids, maps[name].similarity)) for name in (LVS, HTF)}
    columns = []
    for sample_id in figure_ids(data.test_clips):
        record = data.test_clips[sample_id]
        sample = folder.read(sample_id)
        frame = cv2.resize(sample.frame, (FIGURE_CELL, FIGURE_CELL), interpolation=cv2.INTER_AREA)
        box = [v * FIGURE_CELL for v in record["objects"][record["sounding"]]["box"]]
        cells = [draw_box(frame, box), cv2.resize(flow_colors(sample.flow), (FIGURE_CELL, FIGURE_CELL))]
        for name in (LVS, HTF):
            cells.append(draw_box(overlay_heatmap(frame, heatmap(rows[name][sample_id], FIGURE_CELL, FIGURE_CELL)), box))
        title = _label(f"{'moving' if source_moves(record) else 'still'} source", FIGURE_CELL)
        columns.append(np.concatenate([title, *cells], axis=0))
    names = ["", "frame + box", "flow", "LVS", "HTF"]
    heights = [columns[0].shape[0] - 4 * FIGURE_CELL] + [FIGURE_CELL] * 4
    legend = np.concatenate([_label(name, 110, height) for name, height in zip(names, heights)], axis=0)
    image = np.concatenate([legend, *columns], axis=1)
    write_png(path, image)


def _label(text: str, width: int, height: int = 24) -> np.ndarray:
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip
