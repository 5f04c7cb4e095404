"""The commands that use a model: `hearflow localize` and `hearflow demo`."""

from __future__ import annotations

import os

from hearflow.cli.common import object_fusion_options
from hearflow.cli.models import backend_options

def add_localize(commands) -> None:
    parser = commands.add_parser(
        "localize",
        help="heatmaps of the sound source in any video: overlay video, JSON, stills",
        description="For each VIDEO, localize the sound source at every frame (or every SECONDS, or at the "
        "key frame only) with a checkpoint and write OUT/{stem}.overlay.mp4 (the heatmap blended onto every "
        "frame, original size, frame rate and audio; H.264 + AAC), OUT/{stem}.json (per step: time_s, frame, "
        "peak_xy, box, confidence, sounding, in video pixels) and, with --png, OUT/{stem}.steps/{frame}.png. "
        "sounding is true or false for a calibrated checkpoint (`hearflow calibrate`), null otherwise; the "
        "overlay fades where it is false. Prints what it wrote and the speed for each video.",
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video file(s) with an audio track, or folders "
                        "of them (searched recursively, as prepare does)")
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt or released .pth/.ckpt checkpoint, "
                        "a Hub folder or hf://USER/REPO[@REVISION]")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--every", type=float, metavar="SECONDS",
                      help="one step at the first frame at or after each multiple of SECONDS (default: every "
                      "frame); the heatmap is held until the next step")
    when.add_argument("--key-frame", action="store_true",
                      help="one step only, at the middle frame (the benchmark's key frame)")
    parser.add_argument("--no-video", action="store_true", help="do not write the overlay video")
    parser.add_argument("--png", action="store_true", help="write each step's frame with heatmap, box and peak as PNG")
    parser.add_argument("--allow-silent", action="store_true",
                        help="localize videos without an audio track with silence (with a warning) instead of failing")
    parser.add_argument("--batch-size", type=int, default=16, help="steps per forward pass (default 16)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--flow-fusion", type=float, metavar="ALPHA",
                        help="late fusion: scale maps by 1 + ALPHA * flow magnitude (default: the checkpoint's, 0)")
    parser.add_argument("--input-threads", type=int, metavar="N",
                        help="threads making the model inputs (flow, resizes, spectrogram) side by side; "
                        "default: all cores but one when the model runs on a GPU, 1 on the CPU")
    parser.add_argument("--sounding-threshold", type=float, metavar="T",
                        help="a step is sounding when its confidence is above T (default: the checkpoint's "
                        "calibrated threshold; none: sounding is null)")
    object_fusion_options(parser)
    backend_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no summary lines (errors and "
                        "warnings are still printed)")
    parser.set_defaults(run=_run_localize)


def _run_localize(args) -> int:
    # torch's OpenMP threads sleep between operators instead of spinning: the cores are shared
    # with the threads making inputs and writing the overlay (read when torch is first imported,
    # which is below; bench/README.md measures it)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from hearflow.localize import localize_videos

    localize_videos(args.videos, args.checkpoint, args.out, every=args.every, key_frame_only=args.key_frame,
                    video=not args.no_video, png=args.png, allow_silent=args.allow_silent,
                    batch_size=args.batch_size, device=args.device, flow_fusion=args.flow_fusion,
                    input_threads=args.input_threads, backend=args.backend, precision=args.precision,
                    quiet=args.quiet, sounding_threshold=args.sounding_threshold,
                    object_fusion=args.object_fusion, object_weights=args.object_weights)
    return 0


def add_demo(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="the whole method end to end on synthetic videos, on a CPU in minutes",
        description="Synthesise training and test videos of sounding objects, prepare them, train HTF and "
        "the LVS baseline with small CPU configurations (demo-htf, demo-lvs), evaluate both and three "
        "training-free baselines, calibrate both on a validation set and score them with negative audio "
        "(silence, noise, off-screen sounds), print the tables and write OUT/report.json, OUT/report.md, "
        "OUT/figure.png, OUT/negatives.png and the checkpoints OUT/runs/{htf,lvs}/last.pt. --study runs the "
        "flow-prior study instead.",
    )
    parser.add_argument("--out", default="hearflow-demo", metavar="DIR", help="output folder (default hearflow-demo)")
    parser.add_argument("--quick", action="store_true", help="a small, faster version (fewer clips), as CI runs it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis and preparation (default 2)")
    parser.add_argument("--study", action="store_true", help="run the flow-prior study (bench/flow_prior_study.py "
                        "rows, 3 seeds each) into DIR instead of the demo; takes much longer")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    if args.study:
        from hearflow.synthetic.study import run_study

        run_study(args.out, workers=args.workers, progress=not args.quiet)
    else:
        from hearflow.synthetic.demo import run_demo

        run_demo(args.out, quick=args.quick, seed=args.seed, workers=args.workers, progress=not args.quiet)
    return 0
