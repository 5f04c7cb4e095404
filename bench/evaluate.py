"""Benchmark: hearflow's metric computation against the released per-sample evaluation loop.

Both sides score the same random set (7 x 7 float32 similarity maps, VGG-SS-like box
ground truths built once beforehand) in the same run: hearflow with ``ciou`` +
``summarize``; the reference restates the released test loop per sample (cv2.resize,
min-max normalise, np.sort threshold, the three-step binarisation and cIoU in numpy,
then the 21-point AUC loop). Timings alternate between the two sides; the best of
``--repeats`` is reported. The cIoUs and the summaries must be identical.

    python bench/evaluate.py                # 5,000 samples
    python bench/evaluate.py --samples 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import cv2
import numpy as np

from hearflow.data.annotations import gt_map_vggss
from hearflow.metrics import ciou, summarize


@contextlib.contextmanager
def opencv_ipp(enabled: bool):
    """OpenCV 5 wheels route float resizes through IPP; OpenCV 4.x (the released code's) did not."""
    previous = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(enabled)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(previous)


def released_evaluation(maps: np.ndarray, gt_maps: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The released test_step per sample and test_epoch_end, restated."""
    cious = []
    for similarity, gt_map in zip(maps, gt_maps):
        heatmap = cv2.resize(similarity, dsize=(224, 224), interpolation=cv2.INTER_CUBIC)
        low, high = heatmap.min(), heatmap.max()
        if not (high - low) == 0:
            heatmap = (heatmap - low) / (high - low)
        threshold = np.sort(heatmap.flatten())[int(heatmap.shape[0] * heatmap.shape[1] / 2)]
        heatmap[heatmap > threshold] = 1
        heatmap[heatmap < 1] = 0
        infer = np.zeros((224, 224))
        infer[heatmap >= 0.5] = 1
        cious.append(np.sum(infer * gt_map) / (np.sum(gt_map) + np.sum(infer * (gt_map == 0))))
    results = [np.sum(np.array(cious) >= 0.05 * i) / len(cious) for i in range(21)]
    x = [0.05 * i for i in range(21)]
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    summary = {
        "ciou_at_0_5": float(np.sum(np.array(cious) >= 0.5) / len(cious)),
        "auc": float(trapezoid(results, x)),
        "mean_ciou": float(np.mean(np.array(cious))),
    }
    return np.array(cious), summary


def hearflow_evaluation(maps: np.ndarray, gt_maps: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    cious = ciou(maps, gt_maps)
    return cious, summarize(cious)


def random_set(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarity maps in [-1, 1] with a noisy blob; 1-3 normalised boxes per sample, the
    first around the blob (a spread of cIoUs like a trained model's)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:7, 0:7]
    centres = rng.uniform(0, 6, (samples, 2))
    spread = rng.uniform(1, 6, samples)
    blob = np.exp(-((x - centres[:, 0, None, None]) ** 2 + (y - centres[:, 1, None, None]) ** 2) / spread[:, None, None])
    maps = np.tanh(blob + 0.3 * rng.standard_normal((samples, 7, 7))).astype(np.float32)
    gt_maps = np.empty((samples, 224, 224), np.float32)
    for i in range(samples):
        half = rng.uniform(0.1, 0.35, (rng.integers(1, 4), 2))
        middle = rng.uniform(0.1, 0.9, half.shape)
        middle[0] = (centres[i] + 0.5) / 7 + rng.normal(0, 0.05, 2)
        gt_maps[i] = gt_map_vggss(np.concatenate([middle - half, middle + half], axis=1).tolist())
    return maps, gt_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="samples in the random set")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (best reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random set")
    args = parser.parse_args()

    maps, gt_maps = random_set(args.samples, args.seed)
    times = {"released loop": [], "hearflow": []}  # (wall, CPU) seconds per run
    with opencv_ipp(False):
        for _ in range(args.repeats):
            for name, evaluation in (("released loop", released_evaluation), ("hearflow", hearflow_evaluation)):
                wall, cpu = time.perf_counter(), time.process_time()
                result = evaluation(maps, gt_maps)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                if name == "hearflow":
                    ours, our_summary = result
                else:
                    reference, reference_summary = result
    assert np.array_equal(ours, reference), "per-sample cIoUs differ from the released loop"
    assert our_summary == reference_summary, (our_summary, reference_summary)
    with opencv_ipp(True):
        with_ipp, ipp_summary = released_evaluation(maps, gt_maps)

    print(f"{args.samples} samples, 7 x 7 maps, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), "
          f"numpy {np.__version__}, OpenCV {cv2.__version__}; best of {args.repeats} runs")
    best = {}
    for name, runs in times.items():
        best[name] = (min(wall for wall, _ in runs), min(cpu for _, cpu in runs))
        print(f"  {name:14s} wall {best[name][0]:7.3f} s ({best[name][0] / args.samples * 1e6:6.1f} us/sample)   "
              f"CPU {best[name][1]:7.3f} s ({best[name][1] / args.samples * 1e6:6.1f} us/sample)")
    wall_ratio = best["released loop"][0] / best["hearflow"][0]
    cpu_ratio = best["released loop"][1] / best["hearflow"][1]
    print(f"  ratio          wall {wall_ratio:5.1f} x   CPU {cpu_ratio:5.1f} x   (goal >= 20 x)")
    print(f"  identical: cIoUs {np.array_equal(ours, reference)}, summary {our_summary == reference_summary}: "
          + ", ".join(f"{key} {value:.6f}" for key, value in our_summary.items()))
    changed = np.count_nonzero(with_ipp != reference)
    print(f"  released loop with OpenCV's IPP resize: {changed} of {args.samples} cIoUs differ "
          f"(max {np.abs(with_ipp - reference).max():.1e}); summary "
          + ", ".join(f"{key} {value:.6f}" for key, value in ipp_summary.items()))


if __name__ == "__main__":
    main()
