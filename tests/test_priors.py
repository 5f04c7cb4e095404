"""Flow priors against slow, obvious restatements (float64 numpy loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hearflow.model import build_model
from hearflow.model.priors import ChannelPrior, SpatialPrior


def conv1x1(conv: torch.nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
    return conv.weight.detach().double().numpy()[:, :, 0, 0], conv.bias.detach().double().numpy()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def random_prior_inputs(seed: int, batch=2, channels=12, flow_channels=5, height=3, width=4):
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, channels, height, width, generator=generator)
    flow = torch.randn(batch, flow_channels, height, width, generator=generator)
    return visual, flow


def randomise(prior: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def channel_prior_by_loops(prior: ChannelPrior, visual: torch.Tensor, flow: torch.Tensor) -> np.ndarray:
    """Eq. 7-8 one position at a time: beta = softmax_rows(outer(K_v, Q_f) / sqrt(d)), E = V_v beta."""
    wk, bk = conv1x1(prior.key_conv)
    wq, bq = conv1x1(prior.query_conv)
    wv, bv = conv1x1(prior.value_conv)
    wo, bo = conv1x1(prior.out_conv)
    visual, flow = visual.double().numpy(), flow.double().numpy()
    batch, channels, height, width = visual.shape
    d = wk.shape[0]
    out = np.zeros_like(visual)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                k = wk @ visual[b, :, y, x] + bk
                q = wq @ flow[b, :, y, x] + bq
                v = wv @ visual[b, :, y, x] + bv
                beta = np.zeros((d, d))
                for i in range(d):
                    beta[i] = softmax(np.array([k[i] * q[j] for j in range(d)]) / np.sqrt(d))
                e = np.array([sum(v[i] * beta[i, j] for i in range(d)) for j in range(d)])
                out[b, :, y, x] = wo @ e + bo
    return out


def spatial_prior_by_loops(prior: SpatialPrior, visual: torch.Tensor, flow: torch.Tensor) -> np.ndarray:
    """The released attention: each visual position's query against every flow position's key."""
    wq, bq = conv1x1(prior.query_conv)
    wk, bk = conv1x1(prior.key_conv)
    wv, bv = conv1x1(prior.value_conv)
    visual, flow = visual.double().numpy(), flow.double().numpy()
    batch, channels, height, width = visual.shape
    positions = [(y, x) for y in range(height) for x in range(width)]
    d = wq.shape[0]
    out = np.zeros_like(visual)
    for b in range(batch):
        queries = [wq @ visual[b, :, y, x] + bq for y, x in positions]
        keys = [wk @ flow[b, :, y, x] + bk for y, x in positions]
        values = [wv @ visual[b, :, y, x] + bv for y, x in positions]
        for p, (y, x) in enumerate(positions):
            energy = np.array([queries[p] @ keys[n] for n in range(len(positions))]) / np.sqrt(d)
            attention = softmax(energy)
            out[b, :, y, x] = sum(attention[n] * values[n] for n in range(len(positions)))
    return out


def test_channel_prior_matches_equations_7_and_8_position_by_position():
    prior = ChannelPrior(visual_channels=12, flow_channels=5, dim=6)
    randomise(prior, seed=1)
    for seed in (0, 1):
        visual, flow = random_prior_inputs(seed)
        with torch.no_grad():
            fast = prior(visual, flow).double().numpy()
        np.testing.assert_allclose(fast, channel_prior_by_loops(prior, visual, flow), rtol=1e-4, atol=1e-4)


def test_spatial_prior_matches_the_released_attention_restated():
    prior = SpatialPrior(visual_channels=12, flow_channels=5, dim=6)
    randomise(prior, seed=2)
    for seed in (0, 1):
        visual, flow = random_prior_inputs(seed)
        with torch.no_grad():
            fast = prior(visual, flow).double().numpy()
        np.testing.assert_allclose(fast, spatial_prior_by_loops(prior, visual, flow), rtol=1e-4, atol=1e-4)


def test_channel_softmax_is_over_the_flow_axis_not_the_visual_axis():
    # With V_v = 1 everywhere, E_j = sum_i beta_ij; only a softmax over j makes sum_j E_j = d.
    prior = ChannelPrior(visual_channels=4, flow_channels=3, dim=5)
    randomise(prior, seed=3)
    with torch.no_grad():
        prior.value_conv.weight.zero_()
        prior.value_conv.bias.fill_(1.0)
        prior.out_conv.weight.copy_(torch.ones(4, 5, 1, 1))
        prior.out_conv.bias.zero_()
        visual, flow = random_prior_inputs(4, channels=4, flow_channels=3)
        assert torch.allclose(prior(visual, flow), torch.full_like(visual, 5.0), atol=1e-5)


@pytest.mark.parametrize("kind", [ChannelPrior, SpatialPrior])
def test_gate_starts_closed_and_scales_the_prior(kind):
    gated, plain = kind(8, 3, 4, gate=True), kind(8, 3, 4, gate=False)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "gamma"})
    visual, flow = random_prior_inputs(5, channels=8, flow_channels=3)
    assert torch.equal(gated(visual, flow), torch.zeros_like(visual))
    with torch.no_grad():
        gated.gamma.fill_(0.25)
    assert torch.allclose(gated(visual, flow), 0.25 * plain(visual, flow))


def test_released_attention_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in build_model("htf-released").state_dict().items() if k.startswith("flowatt.")}
    assert shapes == {
        "flowatt.query_conv.weight": (64, 512, 1, 1),
        "flowatt.query_conv.bias": (64,),
        "flowatt.key_conv.weight": (64, 512, 1, 1),
        "flowatt.key_conv.bias": (64,),
        "flowatt.value_conv.weight": (512, 512, 1, 1),
        "flowatt.value_conv.bias": (512,),
    }
    maxpool = build_model("htf-released-maxpool").state_dict()
    assert tuple(maxpool["flowatt.key_conv.weight"].shape) == (64, 2, 1, 1)
    assert not any(k.startswith("flownet.") for k in maxpool)
