"""The `hearflow` command: parses arguments, resolves the config and calls one stage.

No logic lives here. Each sub-command has one `_add_<name>` function that declares
its options and names the function that runs it. Options that set a config field
have that field as their ``dest`` (``--epochs`` is ``train.epochs``), so every command
builds its config the same way (`hearflow.config.resolve`: preset < --config <
--set < these flags). Stages raise HearflowError for problems a user can fix, which
`main` prints as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from hearflow import __version__
from hearflow.errors import HearflowError


def _config_options(parser, preset_help: str) -> None:
    parser.add_argument("--preset", help=preset_help + "; see `hearflow presets`")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (any subset of the sections that "
                        "`hearflow presets NAME` prints)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config field, e.g. --set model.prior=spatial (repeatable)")


def _config_flags(args) -> dict:
    """The options whose dest is a config field (``SECTION.FIELD``), as `resolve` takes them."""
    return {name: value for name, value in vars(args).items() if "." in name}


def _add_presets(commands) -> None:
    parser = commands.add_parser(
        "presets",
        help="list the named configurations (the paper's rows and the released variants)",
        description="List the named presets with what each reproduces, or print one as YAML to start a "
        "config file from.",
    )
    parser.add_argument("name", nargs="?", help="print this preset's full configuration as YAML")
    parser.set_defaults(run=_run_presets)


def _run_presets(args) -> int:
    from hearflow.config import PRESETS, preset_config

    if args.name:
        print(preset_config(args.name).to_yaml(), end="")
    else:
        width = max(map(len, PRESETS))
        for name, preset in PRESETS.items():
            print(f"{name:<{width}}  {preset.description}")
    return 0


def _add_synth(commands) -> None:
    parser = commands.add_parser(
        "synth",
        help="write a synthetic sounding-objects benchmark (MP4 videos + VGG-SS-style annotations)",
        description="Write OUT/videos/{id}.mp4 (H.264 + AAC), OUT/annotations.json (VGG-SS format: the "
        "sounding object's box on the key frame, the middle one), OUT/clips.json (every object's box, "
        "class and motion) and OUT/synth.json (the settings). The defaults are the demo's benchmark; "
        "the same seed gives the same clips, so use different seeds for train and test.",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (default: 1)")
    parser.add_argument("--size", metavar="WxH", help="frame size in pixels, e.g. 160x128 or 128 (default: 128x128)")
    parser.add_argument("--seconds", type=float, help="clip length (default: 4)")
    parser.add_argument("--fps", type=int, help="frames per second (default: 25)")
    parser.add_argument("--sample-rate", type=int, help="audio sample rate in Hz (default: 16000)")
    parser.add_argument("--classes", type=int, help="visual classes, each with its own sound (default: 16)")
    parser.add_argument("--objects", type=int, help="objects per clip; the halves layout needs 2 (default: 2)")
    parser.add_argument("--layout", choices=("halves", "free"),
                        help="halves: one object per half; free: anywhere, apart on the key frame (default: halves)")
    parser.add_argument("--object-scale", type=float,
                        help="object size factor; 1 = 39-50%% of the width, 66-88%% of the height (default: 1)")
    parser.add_argument("--speed", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="speed range of moving objects in pixels per frame (default: 3 6)")
    parser.add_argument("--source-moves", type=float, help="share of clips whose sounding object moves (default: 0.75)")
    parser.add_argument("--silent-moves", type=float, help="chance that a silent object moves (default: 0.35)")
    parser.add_argument("--twins", type=float,
                        help="share of clips whose silent object has the sounding object's class (default: 0)")
    parser.add_argument("--no-source", type=float,
                        help="share of clips where no visible object sounds; empty bbox (default: 0)")
    parser.add_argument("--no-source-silence", type=float,
                        help="share of no-source clips that are silent rather than an off-screen class (default: 0.5)")
    parser.add_argument("--snr-db", type=float, help="sound-to-noise ratio of the audio in dB (default: 10)")
    parser.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from hearflow.synthetic.clips import parse_frame_size, synthesize

    knobs = {name: getattr(args, name) for name in (
        "seconds", "fps", "sample_rate", "classes", "objects", "layout", "object_scale", "source_moves",
        "silent_moves", "twins", "no_source", "no_source_silence", "snr_db") if getattr(args, name) is not None}
    if args.speed:
        knobs["speed_min"], knobs["speed_max"] = args.speed
    if args.size:
        knobs["width"], knobs["height"] = parse_frame_size(args.size)
    synthesize(args.out, args.clips, args.seed, workers=args.workers, **knobs)
    print(f"wrote {args.clips} clips to {args.out} (videos/, annotations.json, clips.json)")
    return 0


def _add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare",
        help="turn a folder of videos into training/test samples (frame, flow, audio)",
        description="Prepare every video of SRC into OUT: the key frame (middle frame, or --keyframes) "
        "as JPEG, the optical flow to the next frame as float16 .npy, and the audio window around it as "
        "16-bit WAV, with OUT/manifest.csv and OUT/failures.csv. Bad videos are recorded in failures.csv "
        "and the run goes on; a rerun skips finished samples. The recipe is the data section of the config "
        "(--preset < --config < --set < the flags below).",
    )
    parser.add_argument("src", metavar="SRC", help="folder of videos (searched recursively) or a text file of paths")
    parser.add_argument("out", metavar="OUT", help="output folder (created; a rerun resumes it)")
    _config_options(parser, "configuration whose data section is the recipe (default htf: 16 kHz; "
                    "htf-released: 22,050 Hz)")
    parser.add_argument("--ids", metavar="FILE", help="prepare only these ids (one per line, first CSV column; "
                        "VGG-Sound {youtube_id}_{start:06d} or Flickr numbers), matched against file names")
    parser.add_argument("--keyframes", metavar="FILE", help="Flickr key-frame CSV (flickr_id,frame_indices; "
                        "1-based, first candidate used); other videos use the middle frame")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", metavar="I/N", help="do only shard I of N (0 <= I < N, by a stable hash of the "
                        "id), e.g. one shard per machine; shards may share OUT")
    parser.add_argument("--flow", dest="data.flow_method", choices=("farneback", "dis"),
                        help="flow method: farneback (paper) or dis (faster); default: the preset's")
    parser.add_argument("--flow-pairs", dest="data.flow_pairs", type=int, metavar="K", help="average the flow of "
                        "K consecutive frame pairs around the key frame (default: the preset's, 1)")
    parser.add_argument("--size", dest="data.flow_size", type=int, metavar="PX", help="short side of the stored "
                        "frame and flow; 0 keeps the original resolution (default: the preset's, 256)")
    parser.add_argument("--sample-rate", dest="data.sample_rate", type=int, metavar="HZ",
                        help="audio rate (default: the preset's)")
    parser.add_argument("--seconds", dest="data.seconds", type=float, help="audio window length centred on the "
                        "key frame (default: the preset's, 3)")
    parser.add_argument("--timeout", type=float, metavar="S", help="per-video time limit in seconds; a video "
                        "still running is recorded as a timeout failure (default 300)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry the videos an earlier run recorded in failures.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from hearflow.config import resolve
    from hearflow.data.lists import parse_shard
    from hearflow.prepare import DEFAULT_TIMEOUT_S, prepare

    config = resolve(args.preset, args.config, args.set, _config_flags(args))
    summary = prepare(args.src, args.out, config.data, ids=args.ids, keyframes=args.keyframes, workers=args.workers,
                      shard=parse_shard(args.shard) if args.shard else None,
                      timeout_s=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S,
                      retry_failed=args.retry_failed, progress=not args.quiet)
    for line in summary.report_lines(args.ids):
        print(line, file=sys.stderr)
    print(summary.line())
    return summary.exit_status


def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model on a prepared folder (one process, or DDP under torchrun)",
        description="Train HTF (or any preset) on a folder made by `hearflow prepare`. The config is "
        "built as: preset < --config file < --set KEY=VALUE < explicit flags (--epochs, --batch-size, "
        "--lr, --workers, --seed). Under `torchrun --nproc-per-node N` the same command trains with "
        "DistributedDataParallel; --batch-size is the global batch, split evenly over the N processes.",
    )
    _config_options(parser, "named configuration to start from (default: the config file's `preset`, else "
                    "htf; with --resume, the run's own)")
    parser.add_argument("--train", metavar="DIR", help="prepared training folder")
    parser.add_argument("--train-ids", metavar="FILE",
                        help="text file of sample ids (one per line) to train on, e.g. a 10k subset list")
    parser.add_argument("--train-labels", metavar="JSON",
                        help="VGG-SS-style annotations naming each training sample's class (hearflow synth's also "
                        "list the classes in the frame), so off-screen negatives (--set objective.audio_negatives="
                        "silence,noise,offscreen) are sounds of a class not in the frame; without it, any other clip")
    parser.add_argument("--val", metavar="DIR", help="prepared validation folder, scored after every epoch")
    parser.add_argument("--val-annotations", metavar="PATH",
                        help="validation annotations: VGG-SS-style JSON file or folder of Flickr XML files")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder for checkpoints, config.yaml, "
                        "metrics.csv and TensorBoard events")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt with its "
                        "recorded config and data; the same command line may be given again (options equal to "
                        "the run's are fine, --epochs and --workers may change, others are refused)")
    parser.add_argument("--epochs", dest="train.epochs", type=int, help="number of epochs (paper: 100)")
    parser.add_argument("--batch-size", dest="train.batch_size", type=int,
                        help="global batch size over all processes (paper: 128)")
    parser.add_argument("--lr", dest="train.lr", type=float, help="Adam learning rate (paper: 1e-3)")
    parser.add_argument("--workers", dest="train.workers", type=int,
                        help="data-loading worker processes per training process")
    parser.add_argument("--seed", dest="train.seed", type=int,
                        help="random seed of initialisation, shuffling and augmentation")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="pre-trained weights for the encoders the preset initialises from them: "
                        "model.pretrained_weights, ImageNet's by default (downloaded once by torchvision) or a "
                        "file from hearflow.synthetic.pretrain; --no-pretrained starts them random")
    parser.add_argument("--deterministic", action="store_true",
                        help="use only deterministic algorithms (bit-identical reruns and resumes on CPU)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out samples whose prepared files are missing instead of stopping")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from hearflow.config import resolve
    from hearflow.train import run_config, train

    if args.resume and args.out and args.out != args.resume:
        raise HearflowError(f"--resume {args.resume} continues that run folder; drop --out {args.out}")
    run_dir = args.resume or args.out
    if not run_dir:
        raise HearflowError("train needs --out RUN_DIR (or --resume RUN_DIR)")
    base = run_config(args.resume) if args.resume else None
    config = resolve(args.preset, args.config, args.set, _config_flags(args), base=base)
    train(config, args.train, run_dir, val_dir=args.val, val_annotations=args.val_annotations,
          train_ids=args.train_ids, train_labels=args.train_labels, device=args.device, resume=bool(args.resume), pretrained=args.pretrained,
          deterministic=args.deterministic, skip_missing=args.skip_missing)
    return 0


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score a checkpoint on an annotated test set (cIoU@0.5, AUC, mean cIoU, AP, max-F1)",
        description="Score a hearflow or released checkpoint on a prepared test folder with the "
        "benchmark protocol; prints a table and optionally writes results.json, a per-sample CSV "
        "and overlays of the best and worst maps.",
    )
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt or released .pth/.ckpt checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared test folder")
    parser.add_argument("--annotations", required=True, metavar="PATH",
                        help="VGG-SS-style JSON file, or folder of Flickr SoundNet XML files")
    parser.add_argument("--benchmark", choices=("auto", "flickr", "vggss"), default="auto",
                        help="check that the annotations are of this benchmark (auto: take what they are)")
    parser.add_argument("--out", metavar="JSON", help="write the results here (n, ciou_at_0_5, auc, mean_ciou, ...)")
    parser.add_argument("--per-sample", metavar="CSV", help="write id,ciou,confidence per sample here")
    parser.add_argument("--save-maps", metavar="DIR", help="write heatmap overlays of the best and worst samples here")
    parser.add_argument("--num-maps", type=int, default=8, help="how many best and how many worst overlays (default 8)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out (and count) samples whose prepared files are missing instead of stopping")
    parser.add_argument("--flow-fusion", type=float, metavar="ALPHA",
                        help="late fusion: scale maps by 1 + ALPHA * flow magnitude (default: the checkpoint's, 0)")
    parser.add_argument("--negatives", metavar="KINDS", default="",
                        help="also score every sample with a source with negative audio: comma-separated silence "
                        "(zeros), noise (white, -20 dBFS), offscreen (another clip's sound of a class not in the "
                        "frame): pIA, its AUC, the map maximum, IoU with the positive map, AUROC and max-F1 of "
                        "'a visible object sounds', in the table and results.json's negatives section")
    parser.add_argument("--sounding-threshold", type=float, metavar="T",
                        help="the universal threshold of pIA and of the sounding decision, on the raw map "
                        "(default: the one `hearflow calibrate` stored in the checkpoint, if any)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from hearflow.evaluate import evaluate

    evaluate(args.checkpoint, args.data, args.annotations, benchmark=args.benchmark, out=args.out,
             per_sample=args.per_sample, save_maps=args.save_maps, num_maps=args.num_maps,
             batch_size=args.batch_size, workers=args.workers, device=args.device,
             skip_missing=args.skip_missing, flow_fusion=args.flow_fusion, negatives=args.negatives,
             sounding_threshold=args.sounding_threshold, progress=not args.quiet)
    return 0


def _add_calibrate(commands) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="choose and store a checkpoint's 'a visible object sounds' threshold on a validation set",
        description="Score a validation set's samples with a source with their own audio (positives) and "
        "with negative audio (--negatives), plus its samples without a visible source, and store in the "
        "checkpoint the threshold on the confidence (the raw map's peak at 224 x 224) with the largest "
        "detection F1. `hearflow localize` then writes \"sounding\" per step and fades the overlay where it "
        "is false; `hearflow evaluate --negatives` uses it as pIA's universal threshold. Use a validation "
        "set, not the test set.",
    )
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt (rewritten in place unless --out) "
                        "or released .pth/.ckpt (needs --out)")
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared validation folder")
    parser.add_argument("--annotations", required=True, metavar="PATH",
                        help="VGG-SS-style JSON file, or folder of Flickr SoundNet XML files")
    parser.add_argument("--negatives", metavar="KINDS", default="silence,noise,offscreen",
                        help="negative audio to calibrate against, comma-separated from silence, noise, offscreen "
                        "(default: all three; '' uses only the set's no-source samples)")
    parser.add_argument("--out", metavar="FILE", help="write the calibrated checkpoint here instead of in place")
    parser.add_argument("--benchmark", choices=("auto", "flickr", "vggss"), default="auto",
                        help="check that the annotations are of this benchmark (auto: take what they are)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out samples whose prepared files are missing instead of stopping")
    parser.add_argument("--flow-fusion", type=float, metavar="ALPHA", help="the late fusion the threshold is for, "
                        "recorded with it (default: the checkpoint's, 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args) -> int:
    from hearflow.calibrate import calibrate

    calibrate(args.checkpoint, args.data, args.annotations, negatives=args.negatives, out=args.out,
              benchmark=args.benchmark, batch_size=args.batch_size, workers=args.workers, device=args.device,
              skip_missing=args.skip_missing, flow_fusion=args.flow_fusion, progress=not args.quiet)
    return 0


def _add_localize(commands) -> None:
    parser = commands.add_parser(
        "localize",
        help="heatmaps of the sound source in any video: overlay video, JSON, stills",
        description="For each VIDEO, localize the sound source at every frame (or every SECONDS, or at the "
        "key frame only) with a checkpoint and write OUT/{stem}.overlay.mp4 (the heatmap blended onto every "
        "frame, original size, frame rate and audio; H.264 + AAC), OUT/{stem}.json (per step: time_s, frame, "
        "peak_xy, box, confidence, sounding, in video pixels) and, with --png, OUT/{stem}.steps/{frame}.png. "
        "sounding is true or false for a calibrated checkpoint (`hearflow calibrate`), null otherwise; the "
        "overlay fades where it is false.",
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video file(s) with an audio track")
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt or released .pth/.ckpt checkpoint")
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
    parser.set_defaults(run=_run_localize)


def _run_localize(args) -> int:
    from hearflow.localize import localize_videos

    localize_videos(args.videos, args.checkpoint, args.out, every=args.every, key_frame_only=args.key_frame,
                    video=not args.no_video, png=args.png, allow_silent=args.allow_silent,
                    batch_size=args.batch_size, device=args.device, flow_fusion=args.flow_fusion,
                    input_threads=args.input_threads, sounding_threshold=args.sounding_threshold)
    return 0


def _add_demo(commands) -> None:
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


COMMANDS = [  # in pipeline order
    _add_synth,
    _add_prepare,
    _add_train,
    _add_evaluate,
    _add_calibrate,
    _add_localize,
    _add_demo,
    _add_presets,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearflow",
        description="Self-supervised visual sound-source localization with an optical-flow prior "
        "(Hear The Flow, WACV 2023): prepare videos, train, evaluate and localize.",
    )
    parser.add_argument("--version", action="version", version=f"hearflow {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except HearflowError as error:
        print(f"hearflow: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hearflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
