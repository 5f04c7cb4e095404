"""Every loss over 2 gloo processes: ``loss_batch: global`` computes the 1-process loss of the global
batch; ``per-process`` computes, on each process, the loss of its own share alone (no gathering, no
synchronised BatchNorm), and DDP's average of their gradients is the gradient of the mean of those
N independent sub-batch losses. Negative audio is added around every loss (gathered, or not, too)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from hearflow import distributed
from hearflow.config import preset_config
from hearflow.model import build_model
from hearflow.objective import global_batch_loss
from hearflow.synthetic.presets import DEMO_PRESETS
from hearflow.train import training_embedder

CASES = [(method, batch) for method in ("htf", "ezvsl", "fnac", "slavc") for batch in ("global", "per-process")]
SMALL = {key: value for key, value in DEMO_PRESETS["cpu-small"].items() if key != "model.vision_frozen"}
EPOCH = 10  # past FNAC's warm-up: its regularisers are in the loss


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _model(method: str, batch: str):
    torch.manual_seed(0)
    fields = {**SMALL, "objective.loss_batch": batch, "model.prior": "none"}
    if method != "htf":
        fields.update({"model.projection": 16, "model.dropout_image": 0.0})  # no random masks to compare
    return build_model(config=preset_config(method, **fields)).double().train()


def _rank(rank, world_size, port, inputs, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = distributed.setup("cpu")
    try:
        results = {}
        for method, batch in CASES:
            model = _model(method, batch)
            embedder = training_embedder(model, context)
            share = tuple(x[rank::world_size] for x in inputs)
            loss = global_batch_loss(embedder, model, share[:3], model.config.objective,
                                     negative_spectrogram=share[3], epoch=EPOCH)
            loss.backward()
            results[method, batch] = {"loss": loss.detach(),
                                      "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.teardown(context)


def _one_process(method: str, batch: str, inputs):
    model = _model(method, batch)
    loss = global_batch_loss(model.embed, model, inputs[:3], model.config.objective, negative_spectrogram=inputs[3],
                             epoch=EPOCH)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(got: dict, expected: dict, label):
    assert set(got) == set(expected), label
    for name, value in expected.items():
        error = float((got[name] - value).norm() / value.norm().clamp_min(1e-30))
        assert error < 1e-6, (label, name, error)


@pytest.mark.slow
def test_global_and_per_process_batches_over_two_gloo_processes(tmp_path):
    generator = torch.Generator().manual_seed(2)
    inputs = (torch.randn(6, 3, 64, 64, generator=generator, dtype=torch.float64),
              torch.randn(6, 2, 64, 64, generator=generator, dtype=torch.float64),
              torch.randn(6, 1, 64, 40, generator=generator, dtype=torch.float64),
              torch.randn(6, 1, 64, 40, generator=generator, dtype=torch.float64))  # negative audio
    mp.spawn(_rank, args=(2, _free_port(), inputs, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for method, batch in CASES:
        shares = [tuple(x[rank::2] for x in inputs) for rank in (0, 1)]
        if batch == "global":
            loss, grads = _one_process(method, batch, tuple(torch.cat(parts) for parts in zip(*shares)))
            for rank in (0, 1):
                torch.testing.assert_close(ranks[rank][method, batch]["loss"], loss, rtol=1e-9, atol=0)
                _assert_close_grads(ranks[rank][method, batch]["grads"], grads, (method, batch, rank))
        else:
            alone = [_one_process(method, batch, share) for share in shares]
            for rank in (0, 1):
                torch.testing.assert_close(ranks[rank][method, batch]["loss"], alone[rank][0], rtol=1e-9, atol=0)
            mean = {name: (alone[0][1][name] + alone[1][1][name]) / 2 for name in alone[0][1]}
            for rank in (0, 1):
                _assert_close_grads(ranks[rank][method, batch]["grads"], mean, (method, batch, rank))
            assert not torch.allclose(alone[0][0], alone[1][0])  # the two shares' losses differ
