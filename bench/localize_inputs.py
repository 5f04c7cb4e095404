"""`hearflow localize` input threads: steps/s with 1 thread against N, when the model costs little.

With the model on a GPU, making the inputs (Farnebäck flow at the 256-pixel working size,
resizes, spectrogram) is the whole cost of localizing (bench/README.md). This runs
`Localizer.localize` over a synthetic 640 x 360, 30 fps clip at every frame with a
near-free model (``cpu-small`` at width 8, one torch thread: what a GPU leaves of the
model's cost) and ``input_threads`` = 1 and each value of ``--threads``, alternating
``--repeats`` times, and prints each rate against the 1-thread rate measured in the same run.

    python3 bench/localize_inputs.py                       # 1 vs 2 threads, 6-s clip
    python3 bench/localize_inputs.py --threads 2 4 8 15    # on a bigger machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hearflow import build_model
from hearflow.localize import Localizer
from hearflow.synthetic.clips import synthesize
from hearflow.synthetic.presets import demo_config


def steps_per_second(model, clip: Path, threads: int) -> float:
    start = time.perf_counter()
    steps = sum(1 for _ in Localizer(model, device="cpu", input_threads=threads).localize(clip))
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="input threads to compare with 1")
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each setting (median counts)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = build_model(config=demo_config("cpu-small"), width=8)
    with tempfile.TemporaryDirectory() as folder:
        record = synthesize(folder, 1, seed=0, progress=False, seconds=args.seconds, fps=30, width=640, height=360)[0]
        clip = Path(folder) / "videos" / f"{record['id']}.mp4"
        settings = [1] + [t for t in args.threads if t != 1]
        rates = {threads: [] for threads in settings}
        for _ in range(args.repeats):
            for threads in settings:
                rates[threads].append(steps_per_second(model, clip, threads))
    base = statistics.median(rates[1])
    print(f"{args.seconds:g}-s 640x360 clip, a step at every frame, near-free model, median of {args.repeats}")
    for threads in settings:
        rate = statistics.median(rates[threads])
        print(f"input_threads {threads:2d}: {rate:6.1f} steps/s  {rate / base:4.2f}x")


if __name__ == "__main__":
    main()
