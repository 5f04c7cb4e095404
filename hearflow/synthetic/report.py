"""The demo's outputs for people: the console tables, report.md and the figures."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hearflow.data.prepared import PreparedFolder
from hearflow.io import write_png
from hearflow.metrics import heatmap
from hearflow.negatives import format_negatives, map_max
from hearflow.overlay import draw_box, heatmap_scale, overlay_heatmap, step_alpha
from hearflow.synthetic.lab import (
    CENTER,
    FLOW_ONLY,
    HTF,
    LATE_FUSION,
    LATE_FUSION_ALPHA,
    LVS,
    METHOD_LABELS,
    SUBSETS,
    DemoData,
    source_moves,
)

FIGURE_CLIPS = 6  # test clips in the figure: the first moving-source and still-source ones


FIGURE_CELL = 160  # pixels per figure cell
CONSOLE_WIDTH = 100  # characters per line of the notes under the printed table


METRIC_NOTES = (
    "cIoU@0.5: the share of test clips whose predicted region (the map above its median, as the benchmark "
    "protocol binarises it) overlaps the sounding object's box with a consensus IoU of at least 0.5",
    "AUC: the area under that share as the IoU threshold goes from 0 to 1; mean cIoU: the average overlap",
    "pick rate (pick): the share of clips whose map is higher, on average, inside the sounding object's box than "
    "inside every silent object's: does the method point at the right object at all",
    "moving / still: mean cIoU / pick rate on the clips whose sounding object moves / stands still",
)


LEVEL = 0.02  # mean cIoU: closer than this is level (the seed-to-seed spread is about 0.025, docs/demo-results.md)


def findings(methods: dict[str, dict[str, Any]]) -> list[str]:
    """What the run says, in sentences computed from its numbers (``report.json``'s methods)."""
    pick = {name: metrics.get("pick_rate") for name, metrics in methods.items()}
    mean = {name: metrics["mean_ciou"] for name, metrics in methods.items()}
    lines = []
    if None not in (pick[HTF], pick[LVS], pick[CENTER], pick[FLOW_ONLY]):
        bar = max(pick[CENTER], pick[FLOW_ONLY]) + 0.05
        learnt = [METHOD_LABELS[name].split()[0] for name in (HTF, LVS) if pick[name] >= bar]
        verdict = ("both trained models learnt to point at the sound" if len(learnt) == 2 else
                   f"only {learnt[0]} learnt to point at the sound" if learnt else
                   "neither trained model beat the baselines (try another --seed, or the default size)")
        lines.append(f"HTF points at the sounding object in {pick[HTF]:.0%} of the test clips and LVS in "
                     f"{pick[LVS]:.0%}; a centred box, which sees nothing, in {pick[CENTER]:.0%} and the flow "
                     f"magnitude alone in {pick[FLOW_ONLY]:.0%}: {verdict}.")
    gap = mean[HTF] - mean[LVS]
    lines.append(f"What the flow prior adds (HTF against LVS): mean cIoU {mean[HTF]:.3f} against {mean[LVS]:.3f} "
                 f"({gap:+.3f}): " + ("level on this seed" if abs(gap) < LEVEL else
                                      f"{'HTF' if gap > 0 else 'LVS'} ahead on this seed")
                 + "; docs/demo-results.md compares 3 seeds.")
    moving, still = ({name: methods[name]["subsets"].get(subset, {}).get("mean_ciou") for name in (LVS, LATE_FUSION)}
                     for subset in ("source_moves", "source_still"))
    if None not in (*moving.values(), *still.values()):
        lines.append(f"Late fusion (the LVS map times 1 + the flow magnitude): mean cIoU {mean[LATE_FUSION]:.3f}, "
                     f"{_compare(moving)} LVS where the sounding object moves ({moving[LATE_FUSION]:.3f} against "
                     f"{moving[LVS]:.3f}) and {_compare(still)} where it stands still ({still[LATE_FUSION]:.3f} "
                     f"against {still[LVS]:.3f}).")
    return lines


def _compare(values: dict[str, float]) -> str:
    gap = values[LATE_FUSION] - values[LVS]
    return "level with" if abs(gap) < LEVEL else "above" if gap > 0 else "below"


def format_table(methods: dict[str, dict[str, Any]]) -> str:
    """The printed table (one row per method, overall metrics and the subsets' mean cIoU / pick
    rate), what its columns mean and what the run says."""
    header = f"{'method':<30} {'cIoU@0.5':>8} {'AUC':>6} {'mean cIoU':>9} {'pick':>6} {'moving':>13} {'still':>13}"
    lines = [header, "-" * len(header)]
    for name, metrics in methods.items():
        cells = [f"{metrics['ciou_at_0_5']:>8.3f}", f"{metrics['auc']:>6.3f}", f"{metrics['mean_ciou']:>9.3f}",
                 f"{_number(metrics['pick_rate']):>6}"]
        for subset in ("source_moves", "source_still"):
            values = metrics["subsets"].get(subset, {})
            cells.append(f"{_number(values.get('mean_ciou')):>6}/{_number(values.get('pick_rate')):>6}")
        lines.append(f"{METHOD_LABELS.get(name, name):<30} " + " ".join(cells))
    lines += ["", *(textwrap.fill(note, CONSOLE_WIDTH, subsequent_indent="  ") for note in METRIC_NOTES), "",
              "What this run says:"]
    lines += [textwrap.fill(line, CONSOLE_WIDTH, initial_indent="- ", subsequent_indent="  ") for line in findings(methods)]
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
    annotations = out / "synth" / ("test-annotations.json" if report["no_source_test_clips"] else "test/annotations.json")
    lines = [
        "# hearflow demo",
        "",
        f"`{command}`: {report['train_clips']} synthetic training clips, {report['test_clips']} test clips "
        f"({report['no_source_test_clips']} without a visible source, which count only in AP / max-F1 and the "
        "negative-audio table), "
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
    lines += ["", "How to read the tables:", "", *(f"- {note}" for note in METRIC_NOTES)]
    lines += ["", "What this run says:", "", *(f"- {line}" for line in findings(report["methods"]))]
    lines += [
        "",
        "![test clips: frame with the sounding object's box, optical flow, LVS and HTF heatmaps](figure.png)",
        "",
        "Figure: the first test clips whose sounding object moves, then the first whose sounding "
        "object stands still (not chosen by score). Rows: key frame with the ground-truth box, "
        "optical flow (hue = direction, brightness = speed), LVS heatmap, HTF heatmap; the scale at the "
        "bottom gives the heatmap colours, from each map's minimum (0) to its maximum (1), blended half "
        "onto the frame.",
        "",
        *negatives_markdown(report["negatives"], report["no_source_test_clips"]),
        "Checkpoints (usable as they are):",
        "",
        "```bash",
        f"hearflow evaluate --checkpoint {checkpoints[HTF]} --data {out / 'prepared' / 'test'} "
        f"--annotations {annotations} --negatives silence,noise,offscreen",
        f"hearflow evaluate --checkpoint {checkpoints[LVS]} --flow-fusion {LATE_FUSION_ALPHA} "
        f"--data {out / 'prepared' / 'test'} --annotations {annotations}",
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
    write_png(path, np.concatenate([image, _scale_strip(image.shape[1])], axis=0))


def _scale_strip(width: int, height: int = 44, left: int = 110) -> np.ndarray:
    """The figure's bottom strip: the heatmap colour scale, 0 (a map's minimum) to 1 (its maximum)."""
    strip = np.concatenate([_label("heatmap scale", left, height), np.full((height, width - left, 3), 255, np.uint8)],
                           axis=1)
    bar_left, bar_right = left + 8, width - 8
    strip[6:20, bar_left:bar_right] = heatmap_scale(bar_right - bar_left, 14)
    for text, x in (("0: the map's minimum", bar_left), ("1: its maximum", bar_right - 110)):
        cv2.putText(strip, text, (x, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


NEGATIVE_ROWS = (("own", "its sound"), ("silence", "silence"), ("offscreen", "off-screen sound"))


def format_negatives_table(negatives: dict[str, dict[str, Any]]) -> str:
    """The printed negative-audio tables, one per calibrated method (`hearflow.negatives.format_negatives`)."""
    parts = []
    for name, entry in negatives.items():
        threshold = entry["calibration"]["threshold"]
        section = {kind: value for kind, value in entry.items() if kind != "calibration"}
        parts.append(f"{METHOD_LABELS[name]}:\n" + format_negatives(
            section, f"universal threshold t = {threshold:.4f}, calibrated on the validation set"))
    return "\n".join(parts)


def negatives_markdown(negatives: dict[str, dict[str, Any]], no_source_clips: int) -> list[str]:
    """report.md's negative-audio section: the table per method and kind, what it means, the figure."""
    thresholds = ", ".join(f"{METHOD_LABELS[name]} t = {entry['calibration']['threshold']:.3f}"
                           for name, entry in negatives.items())
    lines = [
        "## Negative audio: does the map go dark when nothing visible sounds?",
        "",
        "Every test clip with a source is scored again with silence, white noise (-20 dBFS) and an off-screen "
        f"sound (another test clip's, of a class not in the frame); the {no_source_clips} clips without a visible "
        "source count with their own audio (`no_source`). The confidence is the raw map's maximum at 224 x 224; "
        "the universal threshold t of pIA and of the decision was calibrated on the validation set (`hearflow "
        f"calibrate`, largest detection F1): {thresholds}.",
        "",
        "| method | audio | n | map max: mean [q25, q75] | pIA | pIA AUC | IoU with own | AUROC | max-F1 | F1 at t |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in negatives.items():
        for kind, values in entry.items():
            if kind in ("calibration", "all"):
                continue
            spread = values["map_max"]
            cells = [f"{spread['mean']:.3f} [{spread['q25']:.3f}, {spread['q75']:.3f}]"]
            cells += [_number(values.get(key)) for key in ("pia", "pia_auc", "iou_median", "auroc", "max_f1",
                                                           "detection_f1")]
            lines.append(f"| {METHOD_LABELS[name]} | {kind} | {values['n']} | " + " | ".join(cells) + " |")
        pooled = entry["all"]
        lines.append(f"| {METHOD_LABELS[name]} | all negatives | {pooled['n']} | | | | | {_number(pooled['auroc'])} | "
                     f"{_number(pooled['max_f1'])} | {_number(pooled.get('detection_f1'))} |")
    lines += [
        "",
        "pIA: share of the image above t; pIA AUC: area under the share of clips with pIA <= x (1: every map "
        "dark); IoU with own: overlap of the map with the same image's map with its own sound, both binarised at "
        "their median (1: the audio changed nothing); AUROC and F1 at t: separating clips with their own sound "
        "from these negatives by the confidence; max-F1: SLAVC's, a detection counts only where cIoU >= 0.5.",
        "",
        "![the same images with their sound, silence and an off-screen sound](negatives.png)",
        "",
        "Figure: the figure's clips; per method, the heatmap with the clip's own sound, with silence and with an "
        "off-screen sound, faded where the calibrated decision says no visible object sounds; each cell gives "
        "the confidence.",
        "",
    ]
    return lines


def write_negatives_figure(path: Path, data: DemoData, negatives: dict[str, Any]) -> None:
    """One column per figure clip: the frame with its box, then per method (`NegativeEvaluation`)
    its own sound, silence and an off-screen sound, drawn as `hearflow localize` draws them."""
    folder = PreparedFolder(data.test_dir)
    columns = []
    for sample_id in figure_ids(data.test_clips):
        record = data.test_clips[sample_id]
        frame = cv2.resize(folder.read(sample_id).frame, (FIGURE_CELL, FIGURE_CELL), interpolation=cv2.INTER_AREA)
        box = [v * FIGURE_CELL for v in record["objects"][record["sounding"]]["box"]]
        cells = [draw_box(frame, box)]
        for result in negatives.values():
            row = result.maps.ids.index(sample_id)
            threshold = result.calibration["threshold"]
            for kind, _ in NEGATIVE_ROWS:
                similarity = result.maps.positive[row] if kind == "own" else result.maps.negatives[kind][row]
                confidence = float(map_max(similarity[None])[0])
                sounding = confidence > threshold
                cell = overlay_heatmap(frame, heatmap(similarity, FIGURE_CELL, FIGURE_CELL), step_alpha(sounding))
                cv2.putText(cell, f"{confidence:.2f} {'sounds' if sounding else 'silent'}", (4, FIGURE_CELL - 6),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
                cells.append(cell)
        columns.append(np.concatenate(cells, axis=0))
    names = ["frame + box"] + [f"{METHOD_LABELS[name].split()[0]}, {label}" for name in negatives
                               for _, label in NEGATIVE_ROWS]
    legend = np.concatenate([_label(name, 150, FIGURE_CELL) for name in names], axis=0)
    write_png(path, np.concatenate([legend, *columns], axis=1))


def _label(text: str, width: int, height: int = 24) -> np.ndarray:
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip
