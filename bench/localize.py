"""`hearflow localize` end to end against the model's forward alone, and its peak memory.

1. A clip of `--seconds` (30) at 640 x 360, 30 fps, with an AAC track, from
   `hearflow.synthetic.clips`; a checkpoint of `--preset` (htf: ResNet-18 encoders at 224 x 224,
   random weights).
2. End to end: `hearflow localize CLIP --every 1/30` (a step at every frame: decode,
   flow, audio window, spectrogram, model, heatmap, overlay blend, H.264 + AAC
   encode, JSON), timed as the whole command, in a subprocess.
3. Reference: the model's forward alone on as many pre-made input tensors as the
   clip has steps, at the same batch size, in this process; half of them before the
   end-to-end command and half after, so a drift in the machine's load cancels.
4. Where the time goes: each non-model part timed alone on the same clip.
5. Peak resident memory (VmHWM) of the same command with `--every 0.5` on the clip
   and on a `--long-seconds` (300) clip, each in its own subprocess.

    python3 bench/localize.py                    # the issue's numbers (about 10 min on 2 cores)
    python3 bench/localize.py --seconds 5 --long-seconds 60   # a quick look
    python3 bench/localize.py --device cuda      # model on a GPU (the issue's goal is on CPU)
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hearflow import build_model
from hearflow.checkpoint import save_checkpoint
from hearflow.synthetic.clips import synthesize

WIDTH, HEIGHT, FPS = 640, 360, 30

RUN = """
import sys
from hearflow.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
peak = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")][0]
print("VMHWM_KB", peak)
sys.exit(code)
"""


def make_clip(folder: Path, seconds: float) -> Path:
    record = synthesize(folder, 1, seed=0, progress=False, seconds=seconds, fps=FPS, width=WIDTH, height=HEIGHT)[0]
    return folder / "videos" / f"{record['id']}.mp4"


def run_localize(clip: Path, checkpoint: Path, out: Path, every: float, batch_size: int,
                 device: str = "cpu") -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `hearflow localize` command in a subprocess."""
    command = [sys.executable, "-c", RUN, "localize", str(clip), "--checkpoint", str(checkpoint),
               "--out", str(out), "--every", repr(every), "--batch-size", str(batch_size), "--device", device]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"localize failed:\n{result.stderr}")
    peak_kb = int(result.stdout.split("VMHWM_KB")[-1].split()[0])
    return wall, peak_kb / 1024


def model_only(model: torch.nn.Module, steps: int, batch_size: int, device: str = "cpu") -> float:
    """Seconds for the forward passes over `steps` pre-made inputs (already on `device`) in
    batches of `batch_size`, each map brought back to the CPU as localize does."""
    config = model.config
    size = config.data.image_size
    frames = int(round(config.data.seconds * config.data.sample_rate))
    spec_frames = (frames - config.data.noverlap) // (config.data.nperseg - config.data.noverlap)
    generator = torch.Generator().manual_seed(0)
    batch = tuple(tensor.to(device) for tensor in (
        torch.randn(batch_size, 3, size, size, generator=generator),
        torch.randn(batch_size, 2, size, size, generator=generator),
        torch.randn(batch_size, 1, config.data.nperseg // 2 + 1, spec_frames, generator=generator),
    ))
    model = model.to(device)
    with torch.no_grad():
        model(*(x[:1] for x in batch))  # warm-up
        start = time.perf_counter()
        for first in range(0, steps, batch_size):
            count = min(batch_size, steps - first)
            model(*(x[:count] for x in batch)).similarity.float().cpu().numpy()
        return time.perf_counter() - start


def parts(clip: Path, model: torch.nn.Module, steps: int) -> dict[str, float]:
    """Seconds spent by each non-model part of localize on the clip, each timed alone."""
    from hearflow.data.transforms import audio_window_length
    from hearflow.localize import Localizer, make_step
    from hearflow.media.encode import VideoWriter
    from hearflow.media.video import VideoFile, iter_frame_pairs
    from hearflow.overlay import overlay_heatmap

    localizer = Localizer(model, device="cpu")
    source = VideoFile(clip)
    info = source.info
    cells = model.config.data.image_size // model.config.model.map_stride
    similarity = np.random.default_rng(0).standard_normal((steps, cells, cells)).astype(np.float32)
    silence = np.zeros(audio_window_length(model.config.data), np.float32)
    times = dict.fromkeys(["decode", "flow + tensors + spectrogram", "audio window (decode + resample)",
                           "heatmap + peak + box", "overlay blend", "H.264 encode"], 0.0)

    def timed(name, function, *arguments):
        start = time.perf_counter()
        result = function(*arguments)
        times[name] += time.perf_counter() - start
        return result

    with tempfile.TemporaryDirectory() as folder, VideoWriter(Path(folder) / "overlay.mp4", info.fps) as writer:
        pairs = iter_frame_pairs(clip)
        for index in range(steps):
            pair = timed("decode", next, pairs)
            timed("flow + tensors + spectrogram", localizer.inputs, [pair.frame, pair.next_frame], 0, silence)
            timed("audio window (decode + resample)", localizer.audio_window, source, pair.time_s)
            step = timed("heatmap + peak + box", make_step, similarity[index], info.width, info.height, pair.time_s, index)
            blended = timed("overlay blend", overlay_heatmap, pair.frame, step.heatmap)
            timed("H.264 encode", writer.write, blended)
    source.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the timed clip (default 30)")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="length of the long memory clip (default 300)")
    parser.add_argument("--preset", default="htf", help="model preset (random weights; default htf)")
    parser.add_argument("--batch-size", type=int, default=16, help="steps per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (the issue's goal) or cuda")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = folder / "model.pt"
        save_checkpoint(checkpoint, model)
        clip = make_clip(folder / "clip", args.seconds)
        n_frames = int(round(args.seconds * FPS))
        steps = n_frames - 1  # every frame but the last has a next frame
        print(f"clip: {args.seconds:g} s, {WIDTH}x{HEIGHT}, {FPS} fps ({n_frames} frames, {steps} steps); "
              f"model: {args.preset}, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
              f"device {args.device}", flush=True)

        half = math.ceil(steps / 2 / args.batch_size) * args.batch_size
        before = model_only(model, half, args.batch_size, args.device)  # the machine's load may drift:
        wall, peak = run_localize(clip, checkpoint, folder / "out", 1 / FPS, args.batch_size, args.device)
        after = model_only(model, steps - half, args.batch_size, args.device)  # half before, half after
        reference = before + after
        end_to_end_fps = n_frames / wall
        model_fps = steps / reference
        print(f"end to end (hearflow localize --every 1/{FPS}): {wall:7.1f} s  {end_to_end_fps:6.2f} frames/s")
        print(f"model forward alone ({steps} inputs):         {reference:7.1f} s  {model_fps:6.2f} frames/s "
              f"({half} inputs before the run: {before:.1f} s, {steps - half} after: {after:.1f} s)")
        print(f"ratio end-to-end / model-only: {end_to_end_fps / model_fps:.2f}x (goal >= 0.80x)")
        print(f"peak RSS of that run: {peak:.0f} MiB", flush=True)

        print("where the non-model time goes (each part alone, same clip):")
        for name, seconds in parts(clip, model, steps).items():
            print(f"  {name:33s} {seconds:6.1f} s  ({1000 * seconds / n_frames:5.1f} ms/frame)")

        long_clip = make_clip(folder / "long", args.long_seconds)
        _, short_peak = run_localize(clip, checkpoint, folder / "out_short", 0.5, args.batch_size, args.device)
        _, long_peak = run_localize(long_clip, checkpoint, folder / "out_long", 0.5, args.batch_size, args.device)
        print(f"peak RSS with --every 0.5: {args.seconds:g}-s clip {short_peak:.0f} MiB, "
              f"{args.long_seconds:g}-s clip {long_peak:.0f} MiB ({long_peak / short_peak:.3f}x; goal within 10 %)")


if __name__ == "__main__":
    main()
