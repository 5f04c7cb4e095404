"""`hearflow localize` end to end per backend, against the eager float32 path of a reference commit, in one run.

1. Clips from `hearflow.synthetic.clips` at 30 fps with AAC audio: `--seconds` (30) at 640 x 360
   and `--hd-seconds` (10) at 1280 x 720. Checkpoints of `--preset` (htf: ResNet-18 encoders at
   224 x 224, random weights), one with the preset's Farnebäck flow and one recorded as trained
   with DIS (``data.flow_method=dis``: what a checkpoint trained on DIS-prepared data asks for).
2. End to end: the whole `hearflow localize CLIP --every 1/30` command (a step at every frame:
   decode, flow, audio window, spectrogram, model, heatmap, overlay blend, H.264 + AAC, JSON) in a
   subprocess, for each configuration: the reference (this repository at `--reference`, by default
   the commit before issue 19: eager float32 torch), and this tree's backends (torch float32
   channels-last, onnx, openvino when installed, torch bfloat16). Configurations alternate, rotated each of `--repeats`
   rounds, so a drift in the machine's load falls on all of them; each prints the median and the
   range of its frames/s (wall clock, start-up included) and its ratio to the reference's median
   on the same clip and flow. The start-up alone (`--key-frame --no-video`) is timed once each.
3. The model's forward alone per backend on pre-made inputs (batch 16), frames/s.
4. Where the time goes: each part of a step timed alone on each clip (wall ms per frame).
5. Peak resident memory (VmHWM) of the default command with `--every 0.5` on the 640 x 360 clip
   and on a `--long-seconds` (300) clip, each in its own subprocess.

    python3 bench/localize.py                                    # the issue's numbers (~25 min on 2 cores)
    python3 bench/localize.py --seconds 10 --hd-seconds 5 --long-seconds 60 --repeats 2   # a quicker look
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hearflow import build_model
from hearflow.checkpoint import save_checkpoint
from hearflow.synthetic.clips import synthesize

FPS = 30
REFERENCE = "7c179e7"  # the last commit before issue 19: eager float32 torch, the "today"
CONFIGS = {  # name -> (tree, flags); "reference" runs the code of --reference
    "reference": ("reference", []),
    "torch": ("here", ["--backend", "torch"]),
    "onnx": ("here", ["--backend", "onnx"]),
    "openvino": ("here", ["--backend", "openvino"]),
    "torch-bf16": ("here", ["--backend", "torch", "--precision", "bfloat16"]),
}
RUN = """
import sys
from hearflow.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("VMHWM_KB", [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")][0])
sys.exit(code)
"""


def make_clip(folder: Path, seconds: float, width: int, height: int) -> Path:
    record = synthesize(folder, 1, seed=0, progress=False, seconds=seconds, fps=FPS, width=width, height=height)[0]
    return folder / "videos" / f"{record['id']}.mp4"


def reference_tree(folder: Path, commit: str) -> Path:
    """The `hearflow` package of `commit`, unpacked into `folder` (git archive), for PYTHONPATH."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", commit, "hearflow"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_localize(tree: Path, clip: Path, checkpoint: Path, out: Path, flags: list[str], every: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `hearflow localize` command run from `tree`."""
    timing = ["--key-frame", "--no-video"] if every == "key" else ["--every", every]
    command = [sys.executable, "-c", RUN, "localize", str(clip), "--checkpoint", str(checkpoint), "--out", str(out),
               "--device", "cpu", *timing, *flags]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"localize failed ({' '.join(command[3:])}):\n{result.stderr[-3000:]}")
    return wall, int(result.stdout.split("VMHWM_KB")[-1].split()[0]) / 1024


def model_alone(model: torch.nn.Module, steps: int, batch_size: int = 16) -> dict[str, float]:
    """Frames/s of each backend's forward over `steps` pre-made inputs (and of the eager model)."""
    from hearflow.backends import example_inputs, make_backend, openvino_available

    shapes = example_inputs(model.config, batch_size)
    generator = torch.Generator().manual_seed(0)
    batch = [torch.randn(shapes[name].shape, generator=generator) for name in ("image", "flow", "spectrogram")]
    rates = {}

    def eager(*inputs):
        with torch.no_grad():
            return model.to(memory_format=torch.contiguous_format)(*inputs).similarity

    runners = {"eager float32 (reference)": eager}
    for name, precision in (("torch", "float32"), ("onnx", "float32"), ("openvino", "float32"), ("torch", "bfloat16")):
        if name == "openvino" and not openvino_available():
            continue
        runners[f"{name} {precision}"] = make_backend(name, model, torch.device("cpu"), precision=precision).maps
    for name, run in runners.items():
        run(*(x[:2] for x in batch))  # warm-up
        start = time.perf_counter()
        for first in range(0, steps, batch_size):
            run(*(x[: min(batch_size, steps - first)] for x in batch))
        rates[name] = steps / (time.perf_counter() - start)
    return rates


def parts(clip: Path, model: torch.nn.Module, steps: int) -> dict[str, float]:
    """Milliseconds per frame (wall clock) of each non-model part of a step, each timed alone on the clip."""
    from hearflow.data.prepared import as_stored
    from hearflow.data.transforms import fit_audio, image_flow_tensors, spectrogram
    from hearflow.localize import Localizer, make_step
    from hearflow.media.encode import VideoWriter
    from hearflow.media.flow import aggregate_flow
    from hearflow.media.frame_stream import iter_frame_pairs
    from hearflow.media.video import VideoFile
    from hearflow.overlay import overlay_heatmap

    localizer = Localizer(model, device="cpu", backend="torch")
    data = model.config.data
    cells = data.image_size // model.config.model.map_stride
    similarity = np.random.default_rng(0).standard_normal((steps, cells, cells)).astype(np.float32)
    times: dict[str, float] = {}

    def timed(name, function, *arguments):
        start = time.perf_counter()
        result = function(*arguments)
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return result

    with tempfile.TemporaryDirectory() as folder, VideoFile(clip, keep_packets=False) as source, \
            VideoWriter(Path(folder) / "overlay.mp4", source.info.fps, threads=1) as writer:
        info = source.info
        pairs = iter_frame_pairs(clip)
        for index in range(steps):
            pair = timed("decode (RGB, full size)", next, pairs)
            audio = timed("audio window (seek, decode, resample)", localizer.audio_window, source, pair.time_s)
            frame, flow = timed(f"flow, {data.flow_method} (the checkpoint's)", aggregate_flow,
                                [pair.frame, pair.next_frame], data.flow_method, data.flow_size, 0)
            timed("flow, dis (for comparison)", aggregate_flow, [pair.frame, pair.next_frame], "dis", data.flow_size, 0)
            frame, flow, audio = timed("storage round trip (JPEG, float16, PCM)", as_stored, frame, flow, audio)
            timed("image + flow resizes to tensors", image_flow_tensors, frame, flow, data, False)
            timed("spectrogram", lambda: spectrogram(fit_audio(audio, data.sample_rate, data), data))
            step = timed("heatmap + peak + box", make_step, similarity[index], info.width, info.height, pair.time_s, index)
            blended = timed("overlay blend (colormap + addWeighted)", overlay_heatmap, pair.frame, step.heatmap)
            timed("RGB -> YUV + H.264 encode (veryfast, 1 thread)", writer.write, blended)
    return {name: 1000 * seconds / steps for name, seconds in times.items()}


def end_to_end(trees, clips, checkpoints, repeats: int, folder: Path) -> dict[tuple, list[float]]:
    """Frames/s of every (clip, flow, configuration), alternating, rotated each round."""
    runs = [(clip, flow, name) for clip in clips for flow in checkpoints for name in CONFIGS]
    rates: dict[tuple, list[float]] = {run: [] for run in runs}
    for round_ in range(repeats):
        order = runs[round_ % len(runs):] + runs[: round_ % len(runs)]
        for clip, flow, name in order:
            tree, flags = CONFIGS[name]
            wall, _ = run_localize(trees[tree], clips[clip][0], checkpoints[flow], folder / "out", flags, repr(1 / FPS))
            rates[(clip, flow, name)].append(clips[clip][1] / wall)
            print(f"  round {round_ + 1}: {clip} {flow:9s} {name:11s} {clips[clip][1] / wall:6.2f} frames/s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="640 x 360 clip length (default 30)")
    parser.add_argument("--hd-seconds", type=float, default=10.0, help="1280 x 720 clip length; 0 skips it (default 10)")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="long clip of the memory check (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the alternating end-to-end runs (default 3)")
    parser.add_argument("--preset", default="htf", help="model preset (random weights; default htf)")
    parser.add_argument("--reference", default=REFERENCE, help=f"commit of the reference (default {REFERENCE})")
    args = parser.parse_args()

    from hearflow.backends import openvino_available

    if not openvino_available():
        print("openvino is not installed (pip install 'hearflow[openvino]'): its configuration is skipped")
        del CONFIGS["openvino"]
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    with tempfile.TemporaryDirectory(prefix="bench-localize-") as folder:
        folder = Path(folder)
        checkpoints = {}
        for flow in ("farneback", "dis"):
            checkpoints[flow] = folder / f"{flow}.pt"
            save_checkpoint(checkpoints[flow], build_model(args.preset, **{"data.flow_method": flow}).eval()
                            if flow != model.config.data.flow_method else model)
        clips = {"640x360": (make_clip(folder / "clip", args.seconds, 640, 360), int(round(args.seconds * FPS)))}
        if args.hd_seconds > 0:
            clips["1280x720"] = (make_clip(folder / "hd", args.hd_seconds, 1280, 720), int(round(args.hd_seconds * FPS)))
        trees = {"here": Path(__file__).resolve().parents[1], "reference": reference_tree(folder / "ref", args.reference)}
        print(f"clips: {', '.join(f'{k} {v[1]} frames' for k, v in clips.items())} at {FPS} fps; model {args.preset}; "
              f"{torch.get_num_threads()} torch threads; reference = {args.reference}", flush=True)

        rates = end_to_end(trees, clips, checkpoints, args.repeats, folder)
        print("end to end, frames/s (median, range over rounds; ratio of medians to the reference):")
        for (clip, flow, name), values in rates.items():
            median = statistics.median(values)
            reference = statistics.median(rates[(clip, flow, "reference")])
            print(f"  {clip} {flow:9s} {name:11s} {median:6.2f}  ({min(values):.2f}-{max(values):.2f})  "
                  f"{median / reference:5.2f}x")
        for name, (tree, flags) in CONFIGS.items():
            wall, _ = run_localize(trees[tree], clips["640x360"][0], checkpoints["farneback"], folder / "key", flags, "key")
            print(f"  start-up of {name} (--key-frame --no-video): {wall:.1f} s")

        print("model forward alone, frames/s (batch 16, 2 x 160 pre-made inputs):", flush=True)
        for name, rate in model_alone(model, 160).items():
            print(f"  {name:28s} {rate:6.2f}")

        print("where the rest goes: each part alone, ms per frame:", flush=True)
        split = {clip: parts(path, model, min(frames - 1, 300)) for clip, (path, frames) in clips.items()}
        print(f"  {'':48s}" + "".join(f"{clip:>10s}" for clip in split))
        for name in next(iter(split.values())):
            print(f"  {name:48s}" + "".join(f"{split[clip][name]:10.2f}" for clip in split))

        long_clip = make_clip(folder / "long", args.long_seconds, 640, 360)
        _, short_peak = run_localize(trees["here"], clips["640x360"][0], checkpoints["farneback"], folder / "m1", [], "0.5")
        _, long_peak = run_localize(trees["here"], long_clip, checkpoints["farneback"], folder / "m2", [], "0.5")
        print(f"peak RSS with --every 0.5 (default backend): {args.seconds:g}-s clip {short_peak:.0f} MiB, "
              f"{args.long_seconds:g}-s clip {long_peak:.0f} MiB ({long_peak / short_peak:.3f}x; goal within 10 %)")


if __name__ == "__main__":
    main()
