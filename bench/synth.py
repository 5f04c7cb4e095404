"""How fast `hearflow.synthetic` makes clips, against encoding alone and an obvious renderer.

1. Generation: `write_clip` for `--clips` clips of the demo's defaults (128 x 128,
   100 frames, 16 kHz AAC), one process; CPU seconds per clip (what a worker core
   spends) and wall clips/s.
2. Reference, encoding alone: the same clips' frames and audio, rendered beforehand,
   written by `write_video` with the same options. The ratio says what share of a
   clip's time is the H.264/AAC encoding that any MP4 writer pays.
3. Reference, obvious renderer: frames composited with `np.copyto(..., where=mask)`
   per object instead of the flat-index writes of `render_frames` (same pixels).
4. Wall clips/s of `synthesize` with `--workers` processes (the demo's setting).

    python3 bench/synth.py                # about a minute on 2 shared cores
    python3 bench/synth.py --clips 30 --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hearflow.media.encode import write_video
from hearflow.synthetic.clips import synthesize, write_clip
from hearflow.synthetic.plan import SynthSettings, plan_clip, synth_classes
from hearflow.synthetic.render import render_audio, render_background, render_frames, render_sprite


def obvious_frames(plan, settings):
    """The straightforward compositing: one masked copy per object and frame."""
    background = render_background(plan, settings)
    classes = synth_classes(settings.classes)
    sprites = [render_sprite(o, classes[o.class_index].shape, classes[o.class_index].texture) for o in plan.objects]
    tracks = [o.positions(settings.n_frames, settings.key_frame) for o in plan.objects]
    for t in range(settings.n_frames):
        frame = background.copy()
        for obj, (pixels, mask), track in zip(plan.objects, sprites, tracks):
            x, y = track[t]
            np.copyto(frame[y : y + obj.size[1], x : x + obj.size[0]], pixels, where=mask[..., None])
        yield frame


def timed(function):
    """(cpu seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60, help="clips per measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes for the synthesize measurement")
    args = parser.parse_args()
    settings = SynthSettings()
    plans = [plan_clip(settings, 0, index) for index in range(args.clips)]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)

        def generate():
            for index in range(args.clips):
                write_clip(folder / f"g{index}.mp4", settings, 0, index)

        def encode_only():
            """CPU and wall seconds of write_video alone, each clip rendered beforehand (untimed)."""
            cpu = wall = 0.0
            for index, plan in enumerate(plans):
                frames, audio = list(render_frames(plan, settings)), render_audio(plan, settings)
                spent = timed(lambda: write_video(folder / f"e{index}.mp4", frames, settings.fps, audio=audio,
                                                  sample_rate=settings.sample_rate, preset="ultrafast", threads=1))
                cpu, wall = cpu + spent[0], wall + spent[1]
            return cpu, wall

        def render_fast():
            for plan in plans:
                for _ in render_frames(plan, settings):
                    pass

        def render_obvious():
            for plan in plans:
                for _ in obvious_frames(plan, settings):
                    pass

        same = all(
            np.array_equal(a, b) for a, b in zip(render_frames(plans[0], settings), obvious_frames(plans[0], settings))
        )
        generation = timed(generate)
        encoding = encode_only()
        fast = timed(render_fast)
        obvious = timed(render_obvious)
        parallel = timed(lambda: synthesize(folder / "set", args.clips * 2, 0, workers=args.workers, progress=False))

    n = args.clips
    print(f"{n} clips of {settings.width}x{settings.height}, {settings.n_frames} frames, {settings.sample_rate} Hz audio")
    print(f"{'measurement':44s} {'CPU ms/clip':>12s} {'clips/CPU-s':>12s} {'wall clips/s':>13s}")
    for name, (cpu, wall), count in (
        ("generate (plan + render + audio + encode)", generation, n),
        ("reference: encode pre-rendered clips only", encoding, n),
        ("render frames (flat-index writes)", fast, n),
        ("reference: render frames (np.copyto where)", obvious, n),
    ):
        print(f"{name:44s} {1000 * cpu / count:12.1f} {count / cpu:12.1f} {count / wall:13.1f}")
    print(f"{f'synthesize {2 * n} clips, {args.workers} workers':44s} {'-':>12s} {'-':>12s} {2 * n / parallel[1]:13.1f}")
    print(f"generation / encoding alone, CPU: {generation[0] / encoding[0]:.2f}x")
    print(f"obvious renderer / flat-index renderer, CPU: {obvious[0] / fast[0]:.2f}x (identical frames: {same})")
    demo_clips = 1500  # the demo's 1,200 training and 300 test clips
    print(f"the demo's {demo_clips:,} clips at this rate with {args.workers} workers: "
          f"{demo_clips / (2 * n / parallel[1]):.0f} s wall")


if __name__ == "__main__":
    main()
