"""The trimap contrastive loss against a per-sample restatement, and on degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hearflow.model import build_model
from hearflow.objective import lvs_loss
from hearflow.synthetic.presets import demo_config


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def released_loss_per_sample(cross: np.ndarray, eps_p=0.65, eps_n=0.40, tau=0.03, temperature=0.07) -> float:
    """The released loss written out for one sample at a time, own pair left out of the negatives."""
    batch = cross.shape[0]
    losses = []
    for k in range(batch):
        own = cross[k, k]
        pos_weights = sigmoid((own - eps_p) / tau)
        neg_weights = 1 - sigmoid((own - eps_n) / tau)
        logits = [np.sum(pos_weights * own) / np.sum(pos_weights)]
        for j in range(batch):
            if j != k:
                weights = sigmoid((cross[k, j] - eps_p) / tau)
                logits.append(np.sum(weights * cross[k, j]) / np.sum(weights))
        logits.append(np.sum(neg_weights * own) / np.sum(neg_weights))
        logits = np.array(logits) / temperature
        losses.append(-(logits[0] - np.log(np.sum(np.exp(logits)))))
    return float(np.mean(losses))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_loss_matches_the_per_sample_restatement(batch):
    rng = np.random.default_rng(batch)
    cross = rng.uniform(-1, 1, size=(batch, batch, 7, 7))
    cross[np.arange(batch), np.arange(batch)] = rng.uniform(0.2, 0.9, size=(batch, 7, 7))
    fast = lvs_loss(torch.tensor(cross, dtype=torch.float32)).item()
    assert math.isclose(fast, released_loss_per_sample(cross), rel_tol=1e-4, abs_tol=1e-4)


def test_thresholds_and_temperatures_are_used():
    rng = np.random.default_rng(7)
    cross = rng.uniform(-1, 1, size=(3, 3, 4, 4))
    options = dict(eps_p=0.3, eps_n=0.1, tau=0.1, temperature=0.5)
    fast = lvs_loss(torch.tensor(cross), **options).item()
    assert math.isclose(fast, released_loss_per_sample(cross, **options), rel_tol=1e-5)
    assert not math.isclose(fast, lvs_loss(torch.tensor(cross)).item(), rel_tol=1e-3)


def test_far_below_threshold_keeps_the_weighted_mean_and_finite_gradients():
    # With tau = 0.01 every weight sigmoid((S - 0.65) / tau) is below 1e-70: a plain
    # float32 sum of them is 0 and the released ratio is 0 / 0. The loss must still
    # equal the ratio computed in float64, with finite gradients, from a half input.
    rng = np.random.default_rng(3)
    cross = rng.uniform(-1, -0.9, size=(3, 3, 7, 7))
    weights = torch.sigmoid((torch.tensor(cross, dtype=torch.float32) - 0.65) / 0.01)
    assert weights.sum() == 0  # the released denominator
    tensor = torch.tensor(cross, dtype=torch.float16, requires_grad=True)
    loss = lvs_loss(tensor, tau=0.01)
    loss.backward()
    expected = released_loss_per_sample(tensor.detach().double().numpy(), tau=0.01)
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)
    assert torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", ["zero audio", "constant image"])
def test_finite_loss_and_gradients_through_the_model_on_degenerate_inputs(batch, case):
    model = build_model(config=demo_config("cpu-small"))
    image = torch.randn(batch, 3, 64, 64)
    flow = torch.randn(batch, 2, 64, 64)
    spectrogram = torch.randn(batch, 1, 64, 40)
    if case == "zero audio":
        spectrogram.zero_()
    else:
        image.fill_(0.5)
        flow.zero_()
    loss = lvs_loss(model(image, flow, spectrogram).cross_similarity)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


# --- negative audio, around any registered loss -------------------------------------------


def test_negative_map_loss_is_a_soft_hinge_at_the_margin():
    from hearflow.objective import negative_map_loss

    at = negative_map_loss(torch.full((2, 4, 4), 0.4), margin=0.4, tau=0.03)
    assert at.item() == pytest.approx(0.03 * math.log(2), rel=1e-5)
    assert negative_map_loss(torch.full((1, 3, 3), -0.6), 0.4, 0.03).item() < 1e-12
    far = negative_map_loss(torch.full((1, 3, 3), 0.9), 0.4, 0.03).item()
    assert far == pytest.approx(0.5, rel=1e-6)  # max(S - margin, 0) where S is far above


def test_global_batch_loss_adds_the_weighted_negative_term_to_any_registered_loss():
    from hearflow.objective import LOSSES, global_batch_loss, negative_map_loss, register_loss

    torch.manual_seed(0)
    config = demo_config("cpu-small", **{"objective.negatives_weight": 0.7})
    model = build_model(config=config).eval()  # eval: BatchNorm does not mix the two halves
    image, flow = torch.randn(3, 3, 64, 64), torch.randn(3, 2, 64, 64)
    spectrogram, negative = torch.randn(3, 1, 64, 40), torch.zeros(3, 1, 64, 40)

    @register_loss("test-peak")
    def peak(features, model, objective, epoch):  # any loss: the own maps' mean peak
        return model.similarity(features).similarity.amax(dim=(1, 2)).mean()

    try:
        config.objective.loss = "test-peak"
        total = global_batch_loss(model.embed, model, (image, flow, spectrogram), config.objective,
                                  negative_spectrogram=negative)
        plain = global_batch_loss(model.embed, model, (image, flow, spectrogram), config.objective)
        maps = model(image, flow, negative).similarity
        expected = plain + 0.7 * negative_map_loss(maps, config.objective.negatives_margin, config.objective.tau)
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    finally:
        del LOSSES["test-peak"]


def test_training_on_the_negative_term_darkens_the_silent_map():
    from hearflow.objective import global_batch_loss

    torch.manual_seed(1)
    torch.set_num_threads(1)
    config = demo_config("cpu-small", **{"objective.negatives_weight": 1.0})
    model = build_model(config=config)
    image, flow = torch.randn(4, 3, 64, 64), torch.randn(4, 2, 64, 64)
    spectrogram, silence = torch.randn(4, 1, 64, 40), torch.full((4, 1, 64, 40), -1.34)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def silent_peak():
        model.eval()
        with torch.no_grad():
            return model(image, flow, silence).similarity.amax(dim=(1, 2)).mean().item()

    before = silent_peak()
    for _ in range(15):
        model.train()
        loss = global_batch_loss(model.embed, model, (image, flow, spectrogram), config.objective,
                                 negative_spectrogram=silence)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert silent_peak() < min(before, config.objective.negatives_margin)
