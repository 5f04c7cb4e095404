"""Streaming training over shards: each epoch's samples split over processes and loader workers.

An epoch (`epoch_order`, `worker_span`):

1. the shards in a seeded order (``(seed, epoch)``), each shard's selected samples in
   file order: the epoch's stream of S samples;
2. the first ``T * G`` of them, T = S // G whole global batches of G = processes x
   per-process batch (the last S - T G, fewer than one global batch, wait for another
   epoch, as a sampler with ``drop_last`` leaves them), cut into one contiguous part
   per process: every process runs T steps, and each sample is in one part only;
3. each process's part cut into contiguous runs of whole batches, one per loader
   worker (the DataLoader takes the workers' batches in turn);
4. each worker reads its run front to back (one sequential pass over a few shards)
   into a shuffle buffer of ``train.shuffle_buffer`` samples' bytes seeded by
   ``(seed, epoch, rank, worker, workers)``, which gives every sample exactly once.

Crops and flips are drawn from ``(seed, epoch, index)``, the index being the
sample's place among the training ids, as for a prepared folder. So an epoch is a
function of (seed, epoch, number of processes, number of workers) alone: a run
resumed with the same ones continues exactly; with other ``--workers`` it continues
with another, equally shuffled order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from hearflow.config import Config
from hearflow.data.device_inputs import encoded_from_members, encoded_item
from hearflow.data.shards import PreparedShards, decode_members, members_of
from hearflow.data.transforms import sample_tensors


def epoch_order(shards: PreparedShards, ids: list[str], seed: int, epoch: int) -> list[int]:
    """The epoch's stream: positions in ``ids``, shard by shard in a seeded order, each shard
    in file order."""
    position = {sample_id: index for index, sample_id in enumerate(ids)}
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for sample_id in ids:
        location = shards.locations[sample_id]
        by_shard.setdefault(location.shard, []).append((location.offset, position[sample_id]))
    names = sorted(by_shard)
    order = np.random.default_rng([seed, epoch]).permutation(len(names))
    return [index for k in order for _, index in sorted(by_shard[names[k]])]


def steps_per_epoch(n_samples: int, world_size: int, local_batch: int) -> int:
    return n_samples // (world_size * local_batch)


def worker_span(n_samples: int, world_size: int, rank: int, local_batch: int, workers: int,
                worker: int) -> tuple[int, int]:
    """[start, stop) of the epoch's stream that ``worker`` (of ``workers``) of process ``rank`` reads."""
    steps = steps_per_epoch(n_samples, world_size, local_batch)
    first = rank * steps + worker * steps // workers
    last = rank * steps + (worker + 1) * steps // workers
    return first * local_batch, last * local_batch


def shuffle_buffer(items, size: int, rng: np.random.Generator) -> Iterator:
    """Every item of ``items`` once, in an order drawn from ``rng``: a buffer of ``size`` items,
    each new one taking the place of a random one, which leaves; the rest at the end, permuted."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


class ShardStream(IterableDataset):
    """The training samples of a sharded dataset for one process, streamed (module docstring).

    shards: the `PreparedShards`; ids: the training samples (sorted ids of the shards by
    default); rank, world_size: this process's place; local_batch: its batch size;
    encoded: items for ``train.gpu_inputs`` (`hearflow.data.device_inputs.encoded_item`)
    instead of tensors. Items are ``PreparedDataset``'s training items.
    """

    def __init__(self, shards: PreparedShards, config: Config, ids: list[str], rank: int, world_size: int,
                 local_batch: int, encoded: bool = False) -> None:
        self.shards, self.ids = shards, list(ids)
        self.data_config, self.seed = config.data, config.train.seed
        self.shuffle = config.train.shuffle
        self.buffer_size = config.train.shuffle_buffer if self.shuffle else 1
        self.rank, self.world_size, self.local_batch = rank, world_size, local_batch
        self.encoded = encoded
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this process reads per epoch (whole batches)."""
        return steps_per_epoch(len(self.ids), self.world_size, self.local_batch) * self.local_batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = epoch_order(self.shards, self.ids, self.seed, self.epoch) if self.shuffle else range(len(self.ids))
        start, stop = worker_span(len(order), self.world_size, self.rank, self.local_batch, workers, worker)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, workers])
        spans = ((index, self.shards.read_span(self.shards.locations[self.ids[index]])) for index in order[start:stop])
        for index, span in shuffle_buffer(spans, self.buffer_size, rng):
            yield self._item(index, span)

    def _item(self, index: int, span: bytes) -> dict:
        sample_id = self.ids[index]
        members = members_of(span, sample_id, self.shards.locations[sample_id].shard)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.encoded:
            return encoded_item(encoded_from_members(members, sample_id), self.data_config, rng)
        sample = decode_members(members, sample_id)
        tensors = sample_tensors(sample.frame, sample.flow, sample.audio, sample.sample_rate, self.data_config,
                                 train=True, rng=rng)
        return {**tensors, "id": sample_id}

