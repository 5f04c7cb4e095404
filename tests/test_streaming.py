"""Streaming training over shards: each sample once per epoch over processes and workers, seeded, resumable."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from fixtures_train import small_config, synth_set  # noqa: F401
from torch.utils.data import DataLoader

from hearflow.checkpoint import load_checkpoint
from hearflow.data.dataset import PreparedDataset
from hearflow.data.shards import PreparedShards
from hearflow.data.streaming import ShardStream, epoch_order, shuffle_buffer, steps_per_epoch, worker_span
from hearflow.pack import pack
from hearflow.train import train



@pytest.fixture(scope="module")
def shards(synth_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "shards"
    summary = pack(synth_set.prepared, out, shard_size="150KB", progress=False)
    assert summary.shards >= 4, summary.line()
    return out


@pytest.mark.parametrize("n_samples", [48, 53])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 5])
def test_worker_spans_cover_whole_global_batches_once(n_samples, world_size, workers):
    local_batch = 4
    steps = steps_per_epoch(n_samples, world_size, local_batch)
    covered = []
    for rank in range(world_size):
        spans = [worker_span(n_samples, world_size, rank, local_batch, workers, w) for w in range(workers)]
        assert sum(stop - start for start, stop in spans) == steps * local_batch  # every rank: the same steps
        assert all((stop - start) % local_batch == 0 for start, stop in spans)
        covered += [i for start, stop in spans for i in range(start, stop)]
    assert sorted(covered) == list(range(steps * world_size * local_batch))
    assert n_samples - len(covered) < world_size * local_batch


def test_the_shuffle_buffer_gives_every_item_once_in_a_seeded_order():
    items = list(range(100))
    orders = [list(shuffle_buffer(iter(items), size, np.random.default_rng(seed))) for size, seed in
              [(10, 0), (10, 0), (10, 1), (1000, 0), (1, 0)]]
    assert all(sorted(order) == items for order in orders)
    assert orders[0] == orders[1] != orders[2]
    assert orders[3] != items and orders[4] == items  # size 1: no shuffling
    # A buffer of 10 moves items forward by at most 10 places.
    assert all(orders[0].index(item) >= item - 10 for item in items)


def _stream_ids(shards, config, rank, world_size, local_batch, workers, epoch):
    stream = ShardStream(PreparedShards(shards), config, PreparedShards(shards).ids, rank, world_size, local_batch)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=local_batch, num_workers=workers, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == len(stream) // local_batch
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_n_processes_see_each_sample_once_per_epoch(shards, workers):
    config = small_config(**{"train.shuffle_buffer": 3})
    ids = PreparedShards(shards).ids
    seen = {}
    for epoch in (1, 2):
        per_rank = [_stream_ids(shards, config, rank, 2, 2, workers, epoch) for rank in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]) == 4  # 16 samples, global batch 4: 4 steps each
        seen[epoch] = [i for batches in per_rank for batch in batches for i in batch["id"]]
        assert sorted(seen[epoch]) == ids
    assert seen[1] != seen[2]  # another shard order and buffer each epoch
    again = [i for rank in range(2) for batch in _stream_ids(shards, config, rank, 2, 2, workers, 1)
             for i in batch["id"]]
    assert again == seen[1]


def test_streamed_items_are_the_folders_training_items(synth_set, shards):
    """The augmentation depends on (seed, epoch, the sample's index) only, as for a folder."""
    config = small_config()
    stream = ShardStream(PreparedShards(shards), config, PreparedShards(shards).ids, 0, 1, 4)
    stream.set_epoch(3)
    folder = PreparedDataset(synth_set.prepared, config, train=True)
    folder.set_epoch(3)
    items = list(stream)
    assert len(items) == 16 and [item["id"] for item in items] != folder.ids
    for item in items[:6]:
        expected = folder[folder.ids.index(item["id"])]
        assert all(torch.equal(item[key], expected[key]) for key in ("image", "flow", "spectrogram"))
    order = epoch_order(PreparedShards(shards), folder.ids, config.train.seed, 3)
    assert sorted(order) == list(range(16))


def _loss_rows(run_dir):
    import csv

    with open(run_dir / "metrics.csv", newline="") as file:
        return [row["train_loss"] for row in csv.DictReader(file)]


def test_resume_on_shards_continues_exactly(shards, tmp_path):
    config = small_config(**{"train.epochs": 2, "train.seed": 3, "train.workers": 2, "train.shuffle_buffer": 4})
    straight = train(config, shards, tmp_path / "straight", deterministic=True, pretrained=False, progress=False)
    config.train.epochs = 1
    train(config, shards, tmp_path / "split", deterministic=True, pretrained=False, progress=False)
    config.train.epochs = 2
    resumed = train(config, None, tmp_path / "split", resume=True, deterministic=True, progress=False)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert _loss_rows(tmp_path / "straight") == _loss_rows(tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "last.pt")["global_step"] == 8


def _train_rank(rank, world_size, port, config, data, run_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(config, data, run_dir, device="cpu", pretrained=False, progress=False)


@pytest.mark.slow
def test_two_processes_stream_shards_in_step(shards, tmp_path):
    """Every process gets the same number of batches from its part of the stream, so DDP
    runs the epoch to its end (unequal parts would leave one process waiting forever)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = small_config(**{"train.epochs": 1, "train.batch_size": 6, "train.workers": 1})  # 16 // 6: 2 steps
    mp.spawn(_train_rank, args=(2, port, config, shards, tmp_path / "run"), nprocs=2, join=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["global_step"] == 2
