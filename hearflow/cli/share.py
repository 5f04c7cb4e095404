"""The commands that share a model: `hearflow push` (to the Hugging Face Hub) and `hearflow serve`
(a web page to try it on a clip)."""

from __future__ import annotations


def add_push(commands) -> None:
    parser = commands.add_parser(
        "push",
        help="share a checkpoint on the Hugging Face Hub (safetensors, config JSON, model card)",
        description="Upload CHECKPOINT to the Hugging Face Hub repository USER/REPO (created when missing) as "
        "model.safetensors, config.json, train-config.yaml, results.json and a model card (README.md) with the "
        "evaluation table and the command that trained it; optimizer and generator states stay home. Anyone "
        "then loads it with hearflow.load('hf://USER/REPO') or --checkpoint hf://USER/REPO, which reads JSON "
        "and safetensors only. Log in first (huggingface-cli login, or HF_TOKEN). Needs "
        "pip install \"hearflow[hub]\".",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="hearflow .pt or released .pth/.ckpt checkpoint")
    parser.add_argument("repo", metavar="USER/REPO", help="the Hub repository, optionally USER/REPO@BRANCH")
    parser.add_argument("--results", metavar="JSON", help="`hearflow evaluate --out` results for the model card's "
                        "table (default: results.json beside CHECKPOINT, when there is one)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", help="the commit message (default: hearflow: upload CHECKPOINT's name)")
    parser.set_defaults(run=_run_push)


def _run_push(args) -> int:
    from hearflow.hub import push

    url = push(args.checkpoint, args.repo, results=args.results, private=args.private, message=args.message)
    print(f"pushed {args.checkpoint} to {url}")
    return 0


def add_serve(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="a web page to try a model on a clip: overlay video, per-step JSON, confidence timeline",
        description="Start a web server with a page on which anyone uploads a clip (or picks one of --clips) and "
        "watch the overlay video with its sound, the per-step JSON (peak, box, confidence, sounding once "
        "calibrated) and the timeline of confidence, with progress while a long clip is localized. Uploads "
        "are written to a temporary folder only, removed when the server stops. Listens on 127.0.0.1 (this "
        "machine only) unless --host says otherwise. Needs pip install \"hearflow[serve]\".",
    )
    parser.add_argument("--checkpoint", required=True, help="hearflow .pt or released .pth/.ckpt checkpoint, a Hub "
                        "folder or hf://USER/REPO")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 for every network the machine is on)")
    parser.add_argument("--clips", metavar="DIR", help="a folder of videos the page offers to pick from")
    parser.add_argument("--max-upload-mb", type=float, default=200, metavar="MB", help="largest upload accepted, in MB "
                        "(default 200)")
    parser.add_argument("--every", type=float, metavar="SECONDS",
                        help="one step at the first frame at or after each multiple of SECONDS (default: every frame)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    from hearflow.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, clips=args.clips, max_upload_mb=args.max_upload_mb,
          every=args.every, device=args.device)
    return 0
