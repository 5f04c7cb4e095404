"""The data commands: `hearflow synth`, `hearflow prepare`, `hearflow pack`."""

from __future__ import annotations

import sys

from hearflow.cli.common import config_flags, config_options

def add_synth(commands) -> None:
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


def add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare",
        help="turn a folder of videos into training/test samples (frame, flow, audio)",
        description="Prepare every video of SRC into OUT: the key frame (middle frame, or --keyframes) "
        "as JPEG, the optical flow to the next frame as a 16-bit PNG (quantised to 1/32 pixel), and the audio window around it as "
        "16-bit WAV, with OUT/manifest.csv and OUT/failures.csv. Bad videos are recorded in failures.csv "
        "and the run goes on; a rerun skips finished samples. The recipe is the data section of the config "
        "(--preset < --config < --set < the flags below).",
    )
    parser.add_argument("src", metavar="SRC", help="folder of videos (searched recursively) or a text file of paths")
    parser.add_argument("out", metavar="OUT", help="output folder (created; a rerun resumes it)")
    config_options(parser, "configuration whose data section is the recipe (default htf: 16 kHz; "
                    "htf-released: 22,050 Hz)")
    parser.add_argument("--ids", metavar="FILE", help="prepare only these ids (one per line, first CSV column; "
                        "VGG-Sound {youtube_id}_{start:06d} or Flickr numbers), matched against file names")
    parser.add_argument("--keyframes", metavar="FILE", action="append", help="Flickr key-frame CSV "
                        "(flickr_id,frame_indices; 1-based, first candidate used); other videos use the middle "
                        "frame. Repeatable: a later file's entry overrides an earlier one's for its id (e.g. the "
                        "release's three overrides, docs/released-recipe.md)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", metavar="I/N", help="do only shard I of N (0 <= I < N, by a stable hash of the "
                        "id), e.g. one shard per machine; shards may share OUT; `auto`: this task's place in a "
                        "SLURM array job (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--flow", dest="data.flow_method", choices=("farneback", "dis"),
                        help="flow method: farneback (paper) or dis (faster); default: the preset's")
    parser.add_argument("--flow-pairs", dest="data.flow_pairs", type=int, metavar="K", help="average the flow of "
                        "K consecutive frame pairs around the key frame (default: the preset's, 1)")
    parser.add_argument("--size", dest="data.flow_size", type=int, metavar="PX", help="short side of the stored "
                        "frame and flow; 0 keeps the original resolution (default: the preset's, 256)")
    parser.add_argument("--sample-rate", dest="data.sample_rate", type=int, metavar="HZ",
                        help="audio rate (default: the preset's)")
    parser.add_argument("--seconds", dest="data.seconds", type=float, help="audio window length, centred as "
                        "--audio-centre says (default: the preset's, 3)")
    parser.add_argument("--audio-centre", dest="data.audio_centre", choices=("key-frame", "clip-middle"),
                        help="centre of the audio window: key-frame, or clip-middle (the middle of the whole "
                        "track, cut as the release cut its Flickr test audio); default: the preset's")
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

    config = resolve(args.preset, args.config, args.set, config_flags(args))
    summary = prepare(args.src, args.out, config.data, ids=args.ids, keyframes=args.keyframes, workers=args.workers,
                      shard=parse_shard(args.shard) if args.shard else None,
                      timeout_s=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S,
                      retry_failed=args.retry_failed, progress=not args.quiet)
    for line in summary.report_lines(args.ids):
        print(line, file=sys.stderr)
    print(summary.line())
    return summary.exit_status


def add_pack(commands) -> None:
    parser = commands.add_parser(
        "pack",
        help="pack a prepared folder into WebDataset-style tar shards with an index (for training at scale)",
        description="Write PREPARED's samples into OUT/shard-NNNNNN.tar files of at most --shard-size bytes: per "
        "sample {key}.jpg (the frame as it is), {key}.flow.png (the 16-bit flow), {key}.flac (the audio, "
        "lossless) and {key}.json (its manifest row); then OUT/index.csv and OUT/shards.json. `hearflow train "
        "--train OUT` and `hearflow evaluate --data OUT` read the shards as they read a folder; `tar -xf` and "
        "the webdataset library read them too.",
    )
    parser.add_argument("prepared", metavar="PREPARED", help="a folder made by `hearflow prepare`")
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--shard-size", default="1GB", metavar="SIZE",
                        help="largest shard, e.g. 1GB, 500MB or 2GiB (default 1GB)")
    parser.add_argument("--shard", metavar="I/N", help="pack only part I of N of the ids (by the stable hash "
                        "`prepare --shard` uses) into shard-I-of-N-*.tar and index.shard-I-of-N.csv, so N jobs "
                        "can share OUT; `auto`: this task's place in a SLURM array job")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_pack)


def _run_pack(args) -> int:
    from hearflow.data.lists import parse_shard
    from hearflow.pack import pack

    summary = pack(args.prepared, args.out, shard_size=args.shard_size,
                   part=parse_shard(args.shard) if args.shard else None, progress=not args.quiet)
    print(summary.line())
    return 0
