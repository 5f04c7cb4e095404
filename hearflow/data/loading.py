"""The training set as `hearflow train` reads it: a prepared folder (map-style) or shards (streamed).

- a prepared folder: `PreparedDataset` with a ``DistributedSampler`` (each process
  takes every N-th sample of a seeded permutation of the epoch, or with ``train.shuffle``
  False, as the release, of its sorted file names, `released_order`: the same batches every
  epoch);
- shards (`hearflow pack`): `ShardStream`, shards split over processes and loader
  workers with a seeded shuffle buffer (`hearflow.data.streaming`; without
  ``train.shuffle``, `released_order` and no buffer).

With ``objective.audio_negatives`` (a prepared folder and CPU inputs only) each item also
holds a negative spectrogram (`hearflow.data.negatives.TrainingNegatives`).

With ``train.gpu_inputs`` the loader's items are bytes and crops
(`hearflow.data.device_inputs`) and `TrainingData.inputs` makes the tensors on the
training device; otherwise the items are the tensors and `inputs` moves them there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from hearflow.config import Config
from hearflow.data.dataset import PreparedDataset
from hearflow.data.device_inputs import collate_encoded, device_inputs
from hearflow.data.negatives import ClipLabels, TrainingNegatives
from hearflow.data.shards import open_prepared
from hearflow.data.streaming import ShardStream
from hearflow.errors import HearflowError


def released_order(ids: Iterable[str]) -> list[str]:
    """The order of the release's unshuffled training: its sorted file names (``ID.jpg``), which
    differ from sorted ids where an id continues with a character below ``.`` (``-``, e.g.
    ``ab-c`` before ``ab``)."""
    return sorted(ids, key=lambda sample_id: sample_id + ".jpg")


class TrainingData:
    """The training samples of one process of a run (rank of world_size).

    ``dataset`` selects the samples (ids, missing files, the layout checks) whatever
    the layout; ``len`` is their number; `loader` gives an epoch's batches.
    """

    def __init__(self, path: str | Path, config: Config, ids: Iterable[str] | None, skip_missing: bool,
                 rank: int = 0, world_size: int = 1, labels: dict[str, ClipLabels] | None = None) -> None:
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.gpu_inputs = config.train.gpu_inputs
        folder = open_prepared(path)
        if not config.train.shuffle:
            ids = released_order(folder.ids if ids is None else ids)
        self.dataset = PreparedDataset(folder, config, train=True, ids=ids, skip_missing=skip_missing,
                                       encoded=self.gpu_inputs)
        self.folder = self.dataset.folder
        self.left_out_line = self.dataset.left_out_line  # what was left out, for the run's warning
        self.streaming = self.folder.layout == "shards"
        if config.objective.audio_negatives:
            if self.streaming or self.gpu_inputs:
                raise HearflowError(
                    "objective.audio_negatives needs a prepared folder and CPU inputs: it is not available with "
                    "shards or train.gpu_inputs (train on the prepared folder the shards were packed from)")
            self.dataset = TrainingNegatives(self.dataset, config.objective.audio_negatives, labels)
        self.sampler = None if self.streaming else DistributedSampler(
            self.dataset, num_replicas=world_size, rank=rank, shuffle=config.train.shuffle, seed=config.train.seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, epoch: int, local_batch: int, workers: int, pin_memory: bool) -> DataLoader:
        """The DataLoader of ``epoch``: ``local_batch`` samples per batch, whole batches only."""
        collate = collate_encoded if self.gpu_inputs else None
        if self.streaming:
            stream = ShardStream(self.folder, self.config, self.dataset.ids, self.rank, self.world_size,
                                 local_batch, encoded=self.gpu_inputs)
            stream.set_epoch(epoch)
            return DataLoader(stream, batch_size=local_batch, num_workers=workers, pin_memory=pin_memory,
                              drop_last=True, collate_fn=collate)
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        return DataLoader(self.dataset, batch_size=local_batch, sampler=self.sampler, num_workers=workers,
                          pin_memory=pin_memory, drop_last=True, collate_fn=collate)

    def negative_spectrogram(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        """The batch's negative spectrograms (B x 1 x F x T) on ``device``, or None without negatives."""
        negative = batch.get("negative_spectrogram")
        return None if negative is None else negative.to(device, non_blocking=True)

    def inputs(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, flow, spectrogram) of a batch of `loader`, on ``device``."""
        if self.gpu_inputs:
            return device_inputs(batch, self.config.data, device)
        return tuple(batch[key].to(device, non_blocking=True) for key in ("image", "flow", "spectrogram"))
