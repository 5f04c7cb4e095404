"""The `hearflow` command: parses arguments and calls one stage function.

No logic lives here. Each sub-command has one `_add_<name>` function that declares
its options and names the function that runs it; stages raise HearflowError for
problems a user can fix, which `main` prints as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from hearflow import __version__
from hearflow.errors import HearflowError


def _add_presets(commands) -> None:
    parser = commands.add_parser(
        "presets",
        help="list the named configurations (paper rows and ablations)",
        description="List the named presets, or print one as YAML to start a config file from.",
    )
    parser.add_argument("name", nargs="?", help="print this preset's full configuration as YAML")
    parser.set_defaults(run=_run_presets)


def _run_presets(args) -> int:
    import yaml

    from hearflow.config import PRESETS, preset_config

    if args.name:
        print(yaml.safe_dump(preset_config(args.name).to_dict(), sort_keys=False), end="")
    else:
        for name in PRESETS:
            print(name)
    return 0


def _add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare",
        help="turn a folder of videos into training/test samples (frame, flow, audio)",
        description="Prepare every video of SRC into OUT: the key frame (middle frame, or --keyframes) "
        "as JPEG, the optical flow to the next frame as float16 .npy, and the audio window around it as "
        "16-bit WAV, with OUT/manifest.csv and OUT/failures.csv. Bad videos are recorded in failures.csv "
        "and the run goes on; a rerun skips finished samples. Recipe defaults come from --preset.",
    )
    parser.add_argument("src", metavar="SRC", help="folder of videos (searched recursively) or a text file of paths")
    parser.add_argument("out", metavar="OUT", help="output folder (created; a rerun resumes it)")
    parser.add_argument("--preset", default="htf", help="configuration whose data section gives the defaults "
                        "(htf: 16 kHz; htf-released: 22,050 Hz); see `hearflow presets`")
    parser.add_argument("--ids", metavar="FILE", help="prepare only these ids (one per line, first CSV column; "
                        "VGG-Sound {youtube_id}_{start:06d} or Flickr numbers), matched against file names")
    parser.add_argument("--keyframes", metavar="FILE", help="Flickr key-frame CSV (flickr_id,frame_indices; "
                        "1-based, first candidate used); other videos use the middle frame")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", metavar="I/N", help="do only shard I of N (0 <= I < N, by a stable hash of the "
                        "id), e.g. one shard per machine; shards may share OUT")
    parser.add_argument("--flow", choices=("farneback", "dis"), help="flow method: farneback (paper) or dis "
                        "(faster); default: the preset's")
    parser.add_argument("--flow-pairs", type=int, metavar="K", help="average the flow of K consecutive frame "
                        "pairs around the key frame (default: the preset's, 1)")
    parser.add_argument("--size", type=int, metavar="PX", help="short side of the stored frame and flow; "
                        "0 keeps the original resolution (default: the preset's, 256)")
    parser.add_argument("--sample-rate", type=int, metavar="HZ", help="audio rate (default: the preset's)")
    parser.add_argument("--seconds", type=float, help="audio window length centred on the key frame "
                        "(default: the preset's, 3)")
    parser.add_argument("--timeout", type=float, metavar="S", help="per-video time limit in seconds; a video "
                        "still running is recorded as a timeout failure (default 300)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry the videos an earlier run recorded in failures.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from hearflow.config import preset_config
    from hearflow.prepare import DEFAULT_TIMEOUT_S, parse_shard, prepare

    data = preset_config(args.preset).data
    for field, value in (("flow_method", args.flow), ("flow_pairs", args.flow_pairs), ("flow_size", args.size),
                         ("sample_rate", args.sample_rate), ("seconds", args.seconds)):
        if value is not None:
            setattr(data, field, value)
    summary = prepare(args.src, args.out, data, ids=args.ids, keyframes=args.keyframes, workers=args.workers,
                      shard=parse_shard(args.shard) if args.shard else None,
                      timeout_s=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S,
                      retry_failed=args.retry_failed, progress=not args.quiet)
    if summary.missing_ids:
        print(f"hearflow: {len(summary.missing_ids)} id(s) of {args.ids} have no video "
              f"(listed in {args.out}/missing_ids.txt)", file=sys.stderr)
    print(summary.line())
    if summary.exit_status:
        print("hearflow: error: no sample could be prepared", file=sys.stderr)
    return summary.exit_status


COMMANDS = [
    _add_presets,
    _add_prepare,
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
