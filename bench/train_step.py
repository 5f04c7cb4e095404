"""Training throughput: hearflow's loop, data loading included, against the model step alone.

The claim (issue 4): with 2 loader workers, `hearflow train` on a prepared folder keeps
at least 0.9x the samples/s of the bare training step on tensors already in memory,
for the ``htf`` preset at batch 32 on CPU, i.e. the input pipeline (JPEG decode,
flow .npy, WAV, resizes, random crop/flip, spectrogram) hides behind the model.

In one run, on the same machine and the same prepared samples:

- model step alone: one batch of 32 samples made once by the training transforms,
  kept in memory; the step that `hearflow train` runs (`training_embedder` +
  `global_batch_loss`, backward, Adam), 1 warm-up step then ``--steps`` timed steps;
- hearflow's loop: `hearflow.train.train` for one epoch of ``--steps`` batches read from
  the prepared folder by ``--workers`` loader processes; its rate is taken from the
  TensorBoard step times (step 1 to the last, so worker start-up and the first step's
  warm-up are excluded, as for the model step) and, for information, over the whole epoch;
- for information, the loader alone: the same DataLoader (``--workers`` processes, the
  training transforms) with no model running, i.e. how much faster than the model the
  input pipeline can go.

The model-only measurement runs before and after the loop; the ratio uses their mean,
so a change of load from other jobs on a shared machine shows up as their spread.

    python3 bench/train_step.py                  # htf, batch 32, 4 steps, 2 workers
    python3 bench/train_step.py --data DIR       # reuse (or keep) the prepared clips in DIR
    python3 bench/train_step.py --device cuda --batch 128 --steps 20 --workers 12   # a GPU
    python3 bench/train_step.py --device cuda --batch 128 --steps 60 --workers 8 --shards --gpu-inputs

``--shards`` trains from the clips packed by `hearflow pack` (streamed); ``--gpu-inputs``
sets ``train.gpu_inputs`` (workers read bytes; JPEG decoding, resizes, crop, flip and
spectrogram run on the device).

On CUDA both sides run under the same autocast (``train.amp``, bf16 where supported)
and the model-only timing synchronises the device before reading the clock.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hearflow.config import preset_config
from hearflow.data.dataset import PreparedDataset
from hearflow.data.loading import TrainingData
from hearflow.distributed import Distributed, resolve_device
from hearflow.model import build_model
from hearflow.pack import pack
from hearflow.prepare import prepare
from hearflow.objective import global_batch_loss
from hearflow.synthetic.clips import synthesize
from hearflow.train import amp_dtype_for, train, training_embedder

CLIPS = 64  # distinct prepared clips; the epoch cycles through them
CLIP_SIZE = (456, 256)  # a typical VGG-Sound frame at prepare's 256-pixel working size


def prepared_folder(root: Path, workers: int) -> Path:
    """Synthetic clips at a real-data frame size, prepared with the htf recipe (made once)."""
    folder = root / "prepared"
    if not (folder / "manifest.csv").exists():
        synthesize(root / "synth", clips=CLIPS, seed=0, workers=workers, progress=False,
                   seconds=3.0, width=CLIP_SIZE[0], height=CLIP_SIZE[1])
        prepare(root / "synth" / "videos", folder, preset_config("htf").data, workers=workers, progress=False)
    return folder


def model_step_rate(config, batch: dict, steps: int, device: torch.device) -> float:
    """Samples/s of the bare training step on one in-memory batch (after 2 warm-up steps)."""
    torch.manual_seed(0)
    model = build_model(config=config).train().to(device)
    embedder = training_embedder(model, Distributed())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    amp_dtype = amp_dtype_for(config.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    inputs = [batch[key].to(device) for key in ("image", "flow", "spectrogram")]

    def step():
        loss = global_batch_loss(embedder, model, tuple(inputs), config.objective, amp_dtype)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return steps * len(batch["image"]) / (time.perf_counter() - start)


def loader_rate(data: TrainingData, batch_size: int, workers: int, batches: int, device: torch.device) -> float:
    """Samples/s of the training loader alone (after its first batch), inputs made on ``device``
    (with ``train.gpu_inputs``, the device's share of the work is in it)."""
    iterator = iter(data.loader(1, batch_size, workers, pin_memory=device.type == "cuda"))
    data.inputs(next(iterator), device)
    start = time.perf_counter()
    for _ in range(batches):
        inputs = data.inputs(next(iterator), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del inputs
    return batches * batch_size / (time.perf_counter() - start)


def loop_rates(config, folder: Path, ids_file: Path, run_dir: Path, device: torch.device) -> tuple[float, float]:
    """(steady samples/s from TensorBoard step times, whole-epoch samples/s) of `train`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shutil.rmtree(run_dir, ignore_errors=True)
    train(config, folder, run_dir, train_ids=ids_file, pretrained=False, device=str(device))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    times = [event.wall_time for event in events.Scalars("train/loss")]
    steady = (len(times) - 1) * config.train.batch_size / (times[-1] - times[0])
    with open(run_dir / "metrics.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    return steady, float(row["samples_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="htf")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of hearflow's loop")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--amp", default="auto", help="train.amp on CUDA: auto, bf16, fp16 or off (default: auto)")
    parser.add_argument("--data", type=Path, help="folder for the prepared clips (kept); default: a temporary one")
    parser.add_argument("--shards", action="store_true", help="train from the clips packed into shards (streamed)")
    parser.add_argument("--gpu-inputs", action="store_true", help="train.gpu_inputs: JPEG decoding, resizes and "
                        "spectrogram on the device, workers only read bytes")
    args = parser.parse_args()

    root = args.data or Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        folder = prepared_folder(root, args.workers)
        config = preset_config(args.preset, **{
            "train.batch_size": args.batch, "train.epochs": 1, "train.workers": args.workers, "train.amp": args.amp,
            "train.gpu_inputs": args.gpu_inputs,
        })
        source = folder
        if args.shards:
            source = root / "shards"
            if not (source / "index.csv").exists():
                pack(folder, source, progress=False)
        device = resolve_device(args.device)
        dataset = PreparedDataset(folder, config, train=True)
        needed = args.batch * (args.steps + 1)
        ids = [dataset.ids[i % len(dataset.ids)] for i in range(needed)]
        ids_file = root / "ids.txt"
        ids_file.write_text("".join(f"{sample_id}\n" for sample_id in ids))
        loader_only = loader_rate(TrainingData(source, config, ids, False), args.batch, args.workers, args.steps,
                                  device)
        items = [dataset[i % len(dataset)] for i in range(args.batch)]
        batch = {key: torch.stack([item[key] for item in items]) for key in ("image", "flow", "spectrogram")}

        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{args.preset}, batch {args.batch}, {args.steps} timed steps, {where}, amp "
              f"{amp_dtype_for(config.train.amp, device)}, torch {torch.__version__} ({torch.get_num_threads()} "
              f"threads), {args.workers} loader workers, {'shards' if args.shards else 'folder'}, "
              f"gpu_inputs {args.gpu_inputs}", file=sys.stderr)
        before = model_step_rate(config, batch, args.steps, device)
        steady, epoch = loop_rates(config, source, ids_file, root / "run", device)
        after = model_step_rate(config, batch, args.steps, device)
    finally:
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    model_only = statistics.mean([before, after])
    print(f"model step alone (in-memory batch): {model_only:7.2f} samples/s  (before {before:.2f}, after {after:.2f})")
    print(f"hearflow loop, steady state       : {steady:7.2f} samples/s  ratio {steady / model_only:.2f}x")
    print(f"hearflow loop, whole epoch        : {epoch:7.2f} samples/s  ratio {epoch / model_only:.2f}x")
    print(f"loader alone ({args.workers} workers, no model)  : {loader_only:7.2f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
