"""Where `hearflow localize` puts the peak and the box, against the sounding object, on a demo's test set.

For each trained model of a demo folder (``hearflow demo --out DIR``: ``DIR/runs/{htf,lvs}/last.pt``)
and each test clip with a sounding object, on the map evaluation gives its prepared sample:

- how often the peak falls inside the sounding object's box: the centre of the map's
  highest cell (localize's ``peak_xy``) and the highest pixel of the bicubic heatmap (its
  ``peak_xy`` before), at the video's size;
- the map localize computes from the video at the key frame, with and without prepare's
  storage round trip (`hearflow.data.prepared.as_stored`): the largest heatmap difference to
  evaluation's and the heatmap peak's hit rate;
- the box (`hearflow.localize.region_box` around the peak) at levels 0.5 .. 0.9: mean IoU
  with the sounding object's box and mean share of the frame;
- each backend (`hearflow.backends`) against evaluation's eager float32 maps: the share of
  clips whose peak cell is the same, and the largest heatmap difference (issue 19's bound:
  >= 99 % and <= 0.02).

    python3 bench/localize_peaks.py --demo hearflow-demo     # after `hearflow demo --quick --out hearflow-demo`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hearflow.backends import make_backend, onnx_available
from hearflow.checkpoint import load
from hearflow.data.annotations import load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.data.transforms import sample_tensors
from hearflow.localize import Localizer, map_peak, peak_and_box, region_box
from hearflow.media.flow import aggregate_flow
from hearflow.media.video import VideoFile, key_frame_index
from hearflow.metrics import heatmap
from hearflow.scoring import predict

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
DEMO_FRAME = 128  # the demo's clips are 128 x 128: the backends' heatmaps are compared at that size


def inside(point, box, width, height) -> bool:
    x, y = point
    return box[0] * width <= x < box[2] * width and box[1] * height <= y < box[3] * height


def iou(pixels, box, width, height) -> float:
    truth = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    overlap = max(0.0, min(pixels[2], truth[2]) - max(pixels[0], truth[0])) * \
        max(0.0, min(pixels[3], truth[3]) - max(pixels[1], truth[1]))
    areas = (pixels[2] - pixels[0]) * (pixels[3] - pixels[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1])
    return overlap / (areas - overlap)


def key_frame_maps(localizer: Localizer, video: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(localize's key-frame map, the same without the storage round trip, width, height)."""
    data = localizer.config.data
    with VideoFile(video, keep_packets=False) as source:
        key = key_frame_index(source.info.n_frames)
        frames = source.read_frames(key, 2)
        audio = localizer.audio_window(source, source.info.frame_time(key))
        width, height = source.info.width, source.info.height
    stored = localizer.similarity([localizer.inputs(frames, 0, audio)])[0]
    frame, flow = aggregate_flow(frames, data.flow_method, data.flow_size or None, 0)
    tensors = sample_tensors(frame, flow, audio, data.sample_rate, data, train=False)
    raw = localizer.similarity([(tensors["image"], tensors["flow"], tensors["spectrogram"])])[0]
    return stored, raw, width, height


def measure(checkpoint: Path, demo: Path) -> dict[str, float]:
    annotations = load_annotations(demo / "synth" / "test" / "annotations.json", "auto")
    model = load(checkpoint)
    dataset = PreparedDataset(demo / "prepared" / "test", model.config, train=False)
    ids = [sample_id for sample_id in dataset.ids if annotations.has_source(sample_id)]
    evaluated = predict(model, PreparedDataset(demo / "prepared" / "test", model.config, train=False, ids=ids),
                        32, torch.device("cpu"), progress=False)
    localizer = Localizer(model, device="cpu", backend="torch")
    rows: dict[str, list[float]] = {}
    for sample_id, similarity in zip(evaluated.ids, evaluated.similarity):
        box = annotations.boxes(sample_id)[0]
        stored, raw, width, height = key_frame_maps(localizer, demo / "synth" / "test" / "videos" / f"{sample_id}.mp4")
        shown = heatmap(similarity, width, height)
        peak = map_peak(similarity, width, height)
        values = {
            "cell-centre peak inside": inside(peak, box, width, height),
            "heatmap peak inside": inside(peak_and_box(shown)[0], box, width, height),
            "localize key frame: heatmap peak inside": inside(peak_and_box(heatmap(stored, width, height))[0], box,
                                                               width, height),
            "  without the storage round trip": inside(peak_and_box(heatmap(raw, width, height))[0], box, width, height),
            "localize - evaluation: max |heatmap difference|": np.abs(heatmap(stored, width, height) - shown).max(),
            "  max |heatmap difference| without the round trip": np.abs(heatmap(raw, width, height) - shown).max(),
        }
        for level in LEVELS:
            pixels = region_box(shown, peak, level)
            values[f"box at {level}: IoU"] = iou(pixels, box, width, height)
            values[f"box at {level}: share of the frame"] = (pixels[2] - pixels[0]) * (pixels[3] - pixels[1]) / (width * height)
        for name, value in values.items():
            rows.setdefault(name, []).append(float(value))
    backend_rows(model, ids, dataset, evaluated.similarity, rows, DEMO_FRAME)
    return {"clips": len(evaluated.ids), **{name: float(np.mean(v) if "max" not in name else np.max(v))
                                            for name, v in rows.items()}}  # "max" rows: the largest


def backend_rows(model, ids, dataset, reference: np.ndarray, rows: dict, size: int) -> None:
    """Rows comparing each backend's maps with the eager float32 ones (`reference`) at size x size."""
    samples = [dataset[dataset.ids.index(sample_id)] for sample_id in ids]
    batch = [torch.stack([sample[key] for sample in samples]) for key in ("image", "flow", "spectrogram")]
    choices = [("torch", "float32"), ("torch", "bfloat16")] + ([("onnx", "float32")] if onnx_available() else [])
    for name, precision in choices:
        maps = make_backend(name, model, torch.device("cpu"), precision=precision).maps(*batch).numpy()
        label = f"backend {name} {precision}"
        for ours, theirs in zip(maps, reference):
            rows.setdefault(f"{label}: peak cell identical", []).append(
                map_peak(ours, size, size) == map_peak(theirs, size, size))
            rows.setdefault(f"{label}: max |heatmap difference|", []).append(
                np.abs(heatmap(ours, size, size) - heatmap(theirs, size, size)).max())
        model.to(memory_format=torch.contiguous_format)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, type=Path, help="a folder written by `hearflow demo`")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {run.name: measure(run / "last.pt", args.demo) for run in sorted((args.demo / "runs").iterdir())
               if (run / "last.pt").is_file()}
    names = list(next(iter(results.values())))
    print(f"{'':52s}" + "".join(f"{name:>10s}" for name in results))
    for name in names:
        print(f"{name:52s}" + "".join(f"{results[run][name]:10.3g}" for run in results))


if __name__ == "__main__":
    main()
