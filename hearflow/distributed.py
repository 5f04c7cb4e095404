"""One training run over several processes (``torchrun``): setup, gathering, synchronised BatchNorm.

`hearflow train` is the same program with 1 or N processes. Under ``torchrun`` (the
environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) each process joins a
process group (NCCL on CUDA, gloo on CPU), reads its share of every global batch and
trains a DistributedDataParallel copy of the model. Two pieces make N processes compute
what one process computes with the same global batch:

- the contrastive loss compares every image with every audio clip of the *global*
  batch: `gather_with_grad` concatenates the features of all ranks (gradients flow back
  to the rank that produced each part), and every rank computes the same global loss;
- BatchNorm normalises over the global batch: `synchronize_batchnorm` swaps each
  BatchNorm layer for a synchronised one (``torch.nn.SyncBatchNorm`` on CUDA; on CPU,
  where torch's does not run, `SyncBatchNorm2d` below).
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hearflow.errors import HearflowError
from hearflow.io import folder_lock


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` -> this process's GPU."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise HearflowError(f"the device is {device!r}; choose auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HearflowError(f"the device {device} was asked for but torch sees no CUDA device")
        return torch.device(device if ":" in device else f"cuda:{local_rank}")
    return torch.device("cpu")


def setup(device: str = "auto") -> Distributed:
    """Join the process group when launched by torchrun; a 1-process run needs nothing.

    Returns this process's `Distributed` (rank, world size, device).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def teardown(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, differentiable (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B x ...) of every rank along dim 0, in rank order: (W*B) x ....

    Every rank must pass the same shape. Backward: each rank receives the sum over
    ranks of the gradient of its own slice, so a loss that every rank computes
    identically on the gathered tensor, averaged over ranks by DDP, gives exactly the
    1-process gradient. Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


@contextmanager
def lock_on_main(context: Distributed, path: Path):
    """Hold the folder lock ``path`` (`hearflow.io.folder_lock`) on rank 0 for the block; when
    it is held elsewhere, every process raises the same HearflowError (none waits for the others)."""
    with ExitStack() as stack:
        problem = None
        if context.is_main:
            try:
                stack.enter_context(folder_lock(path))
            except HearflowError as error:
                problem = str(error)
        problems = [text for text in gather_objects(problem) if text]
        if problems:
            raise HearflowError(problems[0])
        yield


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the batch of all ranks, written with differentiable all-reduces.

    For devices where ``torch.nn.SyncBatchNorm`` does not run (CPU / gloo). Training
    mode: mean and biased variance over all ranks' N x H x W values (two passes, like
    ``F.batch_norm``), running statistics updated with the unbiased variance; eval mode
    and 1 process: plain ``F.batch_norm``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        channels = input.shape[1]
        dims = (0, 2, 3)
        count = all_reduce_sum(input.new_tensor([input.numel() / channels]))
        mean = all_reduce_sum(input.sum(dims)) / count
        centred = input - mean.view(1, channels, 1, 1)
        var = all_reduce_sum(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        output = centred * torch.rsqrt(var + self.eps).view(1, channels, 1, 1)
        if self.affine:
            output = output * self.weight.view(1, channels, 1, 1) + self.bias.view(1, channels, 1, 1)
        return output


def synchronize_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` in place with a synchronised one that holds
    the same parameter and buffer tensors (so dtype, device and ``requires_grad`` are
    kept) and the same train/eval mode; returns the model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        synced = SyncBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            device="meta",
        )
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            setattr(synced, name, tensor)
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
