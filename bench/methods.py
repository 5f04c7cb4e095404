"""One training step of each method preset against ``htf``, in the same run: samples/s and peak memory.

For ``htf``, ``ezvsl``, ``fnac``, ``slavc`` (and each with ``--set``-style ``--prior``), the
step `hearflow train` runs (`training_embedder` + `global_batch_loss`, backward, Adam) on one
in-memory batch of random inputs at the preset's sizes: 2 warm-up steps, then ``--steps``
timed steps. Rates are interleaved (htf, method, htf, ... over ``--rounds``) so a change of
load on a shared machine hits both sides; the table gives each preset's samples/s, its ratio
to htf's, and its peak-memory ratio to htf's (CUDA: ``torch.cuda.max_memory_allocated``; CPU:
the growth of the process's peak RSS over a step, a coarse figure, as ``resource`` reports it).
It also prints each preset's model state, exact and device-independent: trained parameters
(with their gradients and Adam's two moments: 16 bytes each in float32), frozen parameters
and the momentum (EMA) copies (4 bytes each, no gradient, no optimiser state).

    python3 bench/methods.py                          # CPU, batch 8, at 224 px, prior as preset
    python3 bench/methods.py --device cuda --batch 128 --steps 10
    python3 bench/methods.py --prior channel          # every method with the channel prior

Random weights (nothing pre-trained is read); FNAC runs past its warm-up (its regularisers
in the step). Nothing is written.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from hearflow.config import preset_config
from hearflow.distributed import Distributed, resolve_device
from hearflow.model import build_model
from hearflow.objective import global_batch_loss
from hearflow.train import amp_dtype_for, training_embedder

PRESETS = ("htf", "ezvsl", "fnac", "slavc")
EPOCH = 100  # past FNAC's warm-up


def make_step(config, batch: int, device: torch.device):
    """A closure running one training step of ``config`` on one fixed random batch."""
    torch.manual_seed(0)
    model = build_model(config=config).train().to(device)
    embedder = training_embedder(model, Distributed(device=device))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    amp_dtype = amp_dtype_for(config.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    size, data = config.data.image_size, config.data
    frames = int(data.seconds * data.sample_rate - data.noverlap) // (data.nperseg - data.noverlap)
    inputs = (torch.randn(batch, 3, size, size, device=device), torch.randn(batch, 2, size, size, device=device),
              torch.randn(batch, 1, data.nperseg // 2 + 1, frames, device=device))

    def step():
        loss = global_batch_loss(embedder, model, inputs, config.objective, amp_dtype, epoch=EPOCH)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def state_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of a model's training state: trained parameters x 16 (weight, gradient, Adam's two
    moments, float32), frozen parameters x 4 and the momentum copies (``momentum_*``) x 4."""
    parts = {"trained": 0, "frozen": 0, "momentum": 0}
    for name, parameter in model.named_parameters():
        if name.startswith("momentum_"):
            parts["momentum"] += 4 * parameter.numel()
        elif parameter.requires_grad:
            parts["trained"] += 16 * parameter.numel()
        else:
            parts["frozen"] += 4 * parameter.numel()
    return parts


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, batch: int, steps: int, device: torch.device) -> float:
    """Samples/s over ``steps`` steps after 2 warm-up steps."""
    for _ in range(2):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def peak_memory(step, device: torch.device) -> float:
    """Bytes: CUDA's peak allocation over one step; on the CPU the growth of peak RSS (KiB -> bytes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _synchronize(device)
        return float(torch.cuda.max_memory_allocated(device))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return float(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 1) * 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurements per preset (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--prior", choices=("preset", "none", "channel", "spatial"), default="preset",
                        help="model.prior of every preset (default: each preset's own)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    fields = {} if args.prior == "preset" else {"model.prior": args.prior}
    steps = {name: make_step(preset_config(name, **fields), args.batch, device) for name in PRESETS}
    memory = {name: peak_memory(step, device) for name, step in steps.items()}  # first: CPU peak RSS grows once
    rates = {name: [] for name in PRESETS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(rate(step, args.batch, args.steps, device))
    base = statistics.mean(rates["htf"])
    print(f"device {device}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, prior {args.prior}")
    print("| preset | samples/s | vs htf | peak memory vs htf |")
    print("|---|---|---|---|")
    for name in PRESETS:
        mean = statistics.mean(rates[name])
        print(f"| {name} | {mean:.1f} | {mean / base:.2f}x | {memory[name] / memory['htf']:.2f}x |")
    print("\nmodel state (MiB): trained parameters with gradients and Adam's moments + frozen + momentum copies")
    states = {name: state_bytes(build_model(config=preset_config(name, **fields))) for name in PRESETS}
    for name, parts in states.items():
        total = sum(parts.values())
        print(f"  {name:6s} {total / 2**20:7.1f} = {parts['trained'] / 2**20:.1f} + {parts['frozen'] / 2**20:.1f} + "
              f"{parts['momentum'] / 2**20:.1f}   ({total / sum(states['htf'].values()):.2f}x htf)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
