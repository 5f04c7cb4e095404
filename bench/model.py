"""Training-step throughput and peak memory: hearflow's model against the released code's.

One step = forward + loss + backward + Adam step on a batch of 16 image/flow/audio
samples at 224 x 224 (CPU). The reference is a plain restatement, written here, of
the released model and step: torchvision resnet18 encoders, the released spatial
attention, the released loss (own pair "removed" by x (1 - 100)), a frozen vision
encoder by requires_grad=False only (BatchNorm in training mode, no torch.no_grad).
All variants get the same inputs (a 257 x 276 spectrogram: the released 22,050 Hz
front end) and random weights. Timings are interleaved repetitions in one process
(wall-clock samples/s, and the ratio of process CPU time, which other load on a
shared machine disturbs less); peak memory (VmHWM) is measured in a separate
subprocess per variant.

    python3 bench/model.py --steps 1 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hearflow.model import build_model
from hearflow.objective import global_batch_loss

BATCH, SIZE, SPECTROGRAM = 16, 224, (257, 276)


class ReleasedAttention(nn.Module):
    """The released cross-attention: queries/values from the image map, keys from the flow map."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(key_channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, image_map, flow_map):
        b, c, h, w = image_map.shape
        query = self.query_conv(image_map).view(b, -1, h * w).permute(0, 2, 1)
        key = self.key_conv(flow_map).view(b, -1, h * w)
        attention = torch.softmax(torch.bmm(query, key) / math.sqrt(c // 8), dim=-1)
        value = self.value_conv(image_map).view(b, -1, h * w)
        return torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)


def resnet18_trunk(in_channels: int) -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    model.avgpool = nn.Identity()
    model.fc = nn.Identity()
    return model


class ReleasedModel(nn.Module):
    """The released model and loss as one module: forward returns the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.imgnet = resnet18_trunk(3)
        self.audnet = resnet18_trunk(1)
        self.audnet.avgpool = nn.AdaptiveMaxPool2d((1, 1))
        self.flownet = resnet18_trunk(2)
        self.flowatt = ReleasedAttention(512, 512)
        for module in self.audnet.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, mean=1, std=0.02)
                nn.init.constant_(module.bias, 0)
        self.imgnet.requires_grad_(False)

    def forward(self, image, flow, audio):
        image_map = self.imgnet(image).view(-1, 512, 7, 7)
        audio_vector = F.normalize(self.audnet(audio), dim=1)
        flow_map = self.flownet(flow).view(-1, 512, 7, 7)
        image_map = F.normalize(image_map + self.flowatt(image_map, flow_map), dim=1)
        return released_loss(image_map, audio_vector)


def released_loss(image_map, audio_vector, eps_p=0.65, eps_n=0.40, tau=0.03, temperature=0.07):
    batch = image_map.shape[0]
    mask = 1 - 100 * torch.eye(batch)
    own = torch.einsum("nchw,nc->nhw", image_map, audio_vector).unsqueeze(1)
    every = torch.einsum("nchw,kc->nkhw", image_map, audio_vector)
    positive = torch.sigmoid((own - eps_p) / tau)
    negative = 1 - torch.sigmoid((own - eps_n) / tau)
    positive_all = torch.sigmoid((every - eps_p) / tau)
    pos = (positive * own).flatten(2).sum(-1) / positive.flatten(2).sum(-1)
    neg = (positive_all * every).flatten(2).sum(-1) / positive_all.flatten(2).sum(-1) * mask
    hard = (negative * own).flatten(2).sum(-1) / negative.flatten(2).sum(-1)
    logits = torch.cat([pos, neg, hard], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))


def hearflow_step_model(preset: str):
    model = build_model(preset)

    def loss(image, flow, audio):  # what a training step runs: the model's halves and the registered loss
        return global_batch_loss(model.embed, model, (image, flow, audio), model.config.objective)

    return model, loss


def released_step_model():
    model = ReleasedModel()
    return model, model


VARIANTS = {
    "hearflow htf": lambda: hearflow_step_model("htf"),
    "hearflow htf-released": lambda: hearflow_step_model("htf-released"),
    "released (restated)": released_step_model,
}
REFERENCE = "released (restated)"


def make_step(name: str):
    torch.manual_seed(0)
    model, loss_fn = VARIANTS[name]()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
    flow = torch.rand(BATCH, 2, SIZE, SIZE, generator=generator)
    audio = torch.randn(BATCH, 1, *SPECTROGRAM, generator=generator)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(image, flow, audio)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def peak_memory_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(name: str, steps: int) -> float:
    """Peak resident memory of a fresh process that builds ``name`` and runs ``steps`` steps."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", name, "--steps", str(steps)],
        check=True, capture_output=True, text=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per repetition and variant")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (the median is reported)")
    parser.add_argument("--memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_of:
        step = make_step(args.memory_of)
        for _ in range(args.steps):
            step()
        print(peak_memory_mib())
        return

    steps = {name: make_step(name) for name in VARIANTS}
    for step in steps.values():  # warm-up: allocator, kernels
        step()
    wall = {name: [] for name in VARIANTS}  # seconds per step, one entry per repetition
    cpu = {name: [] for name in VARIANTS}  # process CPU seconds per step (less sensitive to other load)
    names = list(VARIANTS)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # rotate the order
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                steps[name]()
            wall[name].append((time.perf_counter() - start_wall) / args.steps)
            cpu[name].append((time.process_time() - start_cpu) / args.steps)
    wall = {name: statistics.median(times) for name, times in wall.items()}
    cpu = {name: statistics.median(times) for name, times in cpu.items()}
    memory = {name: measure_memory(name, args.steps) for name in VARIANTS}

    print(f"batch {BATCH}, {SIZE}x{SIZE}, spectrogram {SPECTROGRAM}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps x {args.repeats} interleaved repeats (median)")
    print(f"{'variant':<24}{'samples/s':>11}{'ratio':>8}{'CPU ratio':>11}{'peak MiB':>10}{'mem ratio':>11}")
    for name in VARIANTS:
        print(
            f"{name:<24}{BATCH / wall[name]:>11.2f}{wall[REFERENCE] / wall[name]:>8.2f}"
            f"{cpu[REFERENCE] / cpu[name]:>11.2f}{memory[name]:>10.0f}{memory[name] / memory[REFERENCE]:>11.2f}"
        )

if __name__ == "__main__":
    main()
