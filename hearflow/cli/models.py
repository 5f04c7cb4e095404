"""The model commands: `hearflow train`, `hearflow evaluate`, `hearflow export`, `hearflow presets`."""

from __future__ import annotations

import argparse

from hearflow.cli.common import config_flags, config_options, object_fusion_options
from hearflow.errors import HearflowError

def add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model on a prepared folder (one process, or DDP under torchrun)",
        description="Train HTF (or any preset) on a folder made by `hearflow prepare`. The config is "
        "built as: preset < --config file < --set KEY=VALUE < explicit flags (--epochs, --batch-size, "
        "--lr, --workers, --seed). Under `torchrun --nproc-per-node N` the same command trains with "
        "DistributedDataParallel; --batch-size is the global batch, split evenly over the N processes.",
    )
    config_options(parser, "named configuration to start from (default: the config file's `preset`, else "
                    "htf; with --resume, the run's own)")
    parser.add_argument("--train", metavar="DIR", help="prepared training folder, or shards made by `hearflow pack` "
                        "(streamed: shards split over processes and loader workers, --set train.shuffle_buffer=N)")
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
                        help="global batch size over all processes, at least 2: each clip's negatives are the "
                        "other clips of the batch (paper: 128)")
    parser.add_argument("--lr", dest="train.lr", type=float, help="Adam learning rate (paper: 1e-3)")
    parser.add_argument("--workers", dest="train.workers", type=int,
                        help="data-loading worker processes per training process (default: the CPUs this "
                        "process may use, shared by the processes torchrun starts on the machine; 0 loads in the "
                        "training process)")
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
    config = resolve(args.preset, args.config, args.set, config_flags(args), base=base)
    train(config, args.train, run_dir, val_dir=args.val, val_annotations=args.val_annotations,
          train_ids=args.train_ids, train_labels=args.train_labels, device=args.device, resume=bool(args.resume),
          pretrained=args.pretrained,
          deterministic=args.deterministic, skip_missing=args.skip_missing)
    return 0


def add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score a checkpoint on an annotated test set (cIoU@0.5, AUC, mean cIoU, AP, max-F1)",
        description="Score a hearflow or released checkpoint on a prepared test folder with the "
        "benchmark protocol; prints a table and optionally writes results.json, a per-sample CSV "
        "and overlays of the best and worst maps.",
    )
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt or released .pth/.ckpt checkpoint, "
                        "a Hub folder or hf://USER/REPO[@REVISION]")
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared test folder, or its shards "
                        "(`hearflow pack`)")
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
    parser.add_argument("--strict", action="store_true", help="refuse annotations with boxes that cannot be "
                        "scored as given (inverted, zero-area, outside the image); by default they are counted, "
                        "warned about and scored as they are")
    object_fusion_options(parser)
    parser.add_argument("--confidence", metavar="NAME", default="slavc",
                        help="the per-sample confidence of AP, max-F1 and the per-sample CSV, recorded in "
                        "results.json: slavc (default; SLAVC's: mean of the top quarter of the bicubic, "
                        "corner-aligned 224 x 224 map scaled from [-1, 1], as its published tables), peak (the "
                        "largest cell of the h x w map) or map_max (the largest value of the raw map upsampled as "
                        "the metric sees it: calibrate's and localize's)")
    backend_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from hearflow.evaluate import evaluate

    evaluate(args.checkpoint, args.data, args.annotations, benchmark=args.benchmark, out=args.out,
             per_sample=args.per_sample, save_maps=args.save_maps, num_maps=args.num_maps,
             batch_size=args.batch_size, workers=args.workers, device=args.device,
             skip_missing=args.skip_missing, flow_fusion=args.flow_fusion, progress=not args.quiet,
             backend=args.backend, precision=args.precision, negatives=args.negatives,
             sounding_threshold=args.sounding_threshold, strict=args.strict, confidence=args.confidence,
             object_fusion=args.object_fusion, object_weights=args.object_weights)
    return 0


def add_calibrate(commands) -> None:
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


def backend_options(parser) -> None:
    parser.add_argument("--backend", choices=("auto", "torch", "onnx", "openvino"), default="auto",
                        help="what runs the model: torch, onnx (ONNX Runtime, the optional extra hearflow[onnx]) "
                        "or openvino (OpenVINO, the extra hearflow[openvino]); auto (default): on the CPU onnx when "
                        "installed, else openvino when installed, else torch")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs the torch backend under autocast: faster on CPUs with AVX512-BF16 or "
                        "AMX (float32 elsewhere, with a warning) but less exact: on the demo's models the peak cell "
                        "moved in 17-23 %% of clips (float32 backends: none); default float32")


def add_export(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="write a checkpoint's model as an ONNX file, for deployment",
        description="Export the model of a hearflow or released checkpoint to ONNX (float32, any batch size): "
        "inputs image B x 3 x S x S, flow B x 2 x S x S (absent for models without flow), spectrogram "
        "B x 1 x F x T, made as hearflow.data.transforms.sample_tensors makes them; output similarity B x h x w. "
        "The file's metadata holds the config (hearflow_config, JSON: the preprocessing) and the inference "
        "options fixed in the graph (hearflow_inference). Needs the onnx package (pip install 'hearflow[onnx]').",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="hearflow .pt or released .pth/.ckpt checkpoint, "
                        "a Hub folder or hf://USER/REPO[@REVISION]")
    parser.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--flow-fusion", type=float, metavar="ALPHA",
                        help="late fusion fixed in the graph (default: the checkpoint's, 0)")
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from hearflow.backends import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, flow_fusion=args.flow_fusion)
    inputs = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in summary["inputs"].items())
    print(f"wrote {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB): inputs {inputs} -> similarity "
          f"{'x'.join(map(str, summary['similarity']))} per sample (flow fusion {summary['flow_fusion']:g})")
    return 0


def add_presets(commands) -> None:
    parser = commands.add_parser(
        "presets",
        help="list the named configurations (the paper's rows and the released variants)",
        description="List the named presets with what each reproduces, or print one as YAML to start a "
        "config file from.",
    )
    parser.add_argument("name", nargs="?", help="print this preset's fields that differ from htf, each with why, "
                        "then its full configuration as YAML")
    parser.set_defaults(run=_run_presets)


def _run_presets(args) -> int:
    from hearflow.config import PRESETS, preset_config, preset_differences

    if args.name:
        config = preset_config(args.name)  # an unknown name is one line naming the presets
        print(f"# {args.name}: {PRESETS[args.name].description}")
        for key, value, paper, why in preset_differences(args.name):
            print(f"#   {key}: {value!r} (htf: {paper!r}) -- {why}")
        print(config.to_yaml(), end="")
    else:
        width = max(map(len, PRESETS))
        for name, preset in PRESETS.items():
            print(f"{name:<{width}}  {preset.description}")
    return 0
