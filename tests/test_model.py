"""The ResNet trunk, the encoders (initialisation, ImageNet loading, freezing) and the HTF model."""

from __future__ import annotations

import copy
import math
import os
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hearflow.config import PRESETS
from hearflow.errors import HearflowError
from hearflow.model import build_model
from hearflow.model.encoders import AudioEncoder, imagenet_weights_file
from hearflow.model.resnet import ResNetTrunk
from hearflow.objective import lvs_loss
from hearflow.synthetic.presets import DEMO_PRESETS, demo_config

SMALL = {"width": 8, "image_size": 64, "train_resize": 70, "prior_dim": 16}


def inputs(batch: int, size: int, seed: int = 0, frames: int = 40):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, size, size, generator=generator),
        torch.randn(batch, 2, size, size, generator=generator),
        torch.randn(batch, 1, 64, frames, generator=generator),
    )


def random_torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


# ---------------------------------------------------------------- ResNet trunk


def test_trunk_loads_torchvision_resnet18_strictly_and_matches_its_output():
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(random_torchvision_resnet18_state())
    trunk = ResNetTrunk()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    trunk.load_state_dict(state, strict=True)
    assert set(trunk.state_dict()) == set(state)
    reference.avgpool, reference.fc = nn.Identity(), nn.Identity()  # the released encoders
    reference.eval(), trunk.eval()
    image = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference(image).view(2, 512, 3, 3)
        assert torch.allclose(trunk(image), expected, atol=1e-5)


@pytest.mark.parametrize("map_stride", [32, 16, 8])
def test_trunk_width_and_map_stride_keep_keys_and_set_the_map_size(map_stride):
    trunk = ResNetTrunk(in_channels=1, width=16, map_stride=map_stride)
    assert set(trunk.state_dict()) == set(ResNetTrunk().state_dict())
    assert trunk(torch.randn(1, 1, 64, 64)).shape == (1, 128, 64 // map_stride, 64 // map_stride)


def test_audio_encoder_is_max_pooled_normalised_and_initialised_as_released():
    torch.manual_seed(0)
    encoder = AudioEncoder()
    assert encoder.conv1.weight.shape == (64, 1, 7, 7)
    weights = torch.cat([m.weight for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(weights.mean().item() - 1) < 0.01 and abs(weights.std().item() - 0.02) < 0.005
    biases = torch.cat([m.bias for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)])
    assert torch.all(biases == 0)
    fan_out = 64 * 3 * 3
    assert abs(encoder.layer1[0].conv1.weight.std().item() - math.sqrt(2 / fan_out)) < 0.005
    encoder.eval()
    spectrogram = torch.randn(3, 1, 80, 50)
    vector = encoder(spectrogram)
    expected = F.normalize(ResNetTrunk.forward(encoder, spectrogram).flatten(2).max(dim=2).values, dim=1)
    assert vector.shape == (3, 512)
    assert torch.allclose(vector, expected, atol=1e-6)


# ---------------------------------------------------------------- ImageNet initialisation


@pytest.fixture
def cached_imagenet_weights():
    """A random resnet18 state dict placed where torchvision's cache looks (TORCH_HOME is a temp dir)."""
    state = random_torchvision_resnet18_state()
    path = imagenet_weights_file()
    assert path.startswith(os.environ["TORCH_HOME"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def test_pretrained_encoders_receive_the_cached_weights_and_rgb_mean_conv1(cached_imagenet_weights):
    model = build_model("htf", pretrained=True)  # flow conv1: rgb-mean
    for name, value in model.imgnet.state_dict().items():
        assert torch.equal(value, cached_imagenet_weights[name]), name
    for name, value in model.flownet.state_dict().items():
        if name != "conv1.weight":
            assert torch.equal(value, cached_imagenet_weights[name]), name
    mean = cached_imagenet_weights["conv1.weight"].mean(dim=1)
    assert model.flownet.conv1.weight.shape == (64, 2, 7, 7)
    assert torch.allclose(model.flownet.conv1.weight[:, 0], mean) and torch.allclose(model.flownet.conv1.weight[:, 1], mean)
    audio_reference = AudioEncoder()
    assert model.audnet.conv1.weight.shape == audio_reference.conv1.weight.shape


def test_released_flow_conv1_is_a_fresh_default_initialised_conv(cached_imagenet_weights):
    model = build_model("htf-released", pretrained=True)
    conv1 = model.flownet.conv1.weight
    bound = 1 / math.sqrt(2 * 7 * 7)  # PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv1.abs().max() <= bound and conv1.std() > bound / 3
    assert torch.equal(model.flownet.layer4[1].conv2.weight, cached_imagenet_weights["layer4.1.conv2.weight"])
    assert torch.equal(model.imgnet.conv1.weight, cached_imagenet_weights["conv1.weight"])


def test_unpretrained_model_reads_no_weights(cached_imagenet_weights):
    model = build_model("htf", pretrained=False)
    assert not torch.equal(model.imgnet.conv1.weight, cached_imagenet_weights["conv1.weight"])


def test_missing_weights_without_network_is_a_clear_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(HearflowError, match="--no-pretrained") as error:
        build_model("htf", pretrained=True)
    assert imagenet_weights_file() in str(error.value)


def test_pretrained_with_another_width_is_an_error():
    with pytest.raises(HearflowError, match="width"):
        build_model("htf", pretrained=True, width=32)
    build_model(config=demo_config("cpu-small"), pretrained=True)  # nothing ImageNet-initialised: no weights needed


# ---------------------------------------------------------------- the model


def test_similarity_is_the_cosine_of_prior_enhanced_visual_map_and_audio():
    model = build_model("htf", **SMALL).eval()
    image, flow, spectrogram = inputs(3, 64)
    with torch.no_grad():
        out = model(image, flow, spectrogram)
        visual = model.imgnet(image)
        visual = visual + model.flowatt(visual, model.flownet(flow))
        audio = ResNetTrunk.forward(model.audnet, spectrogram).mean(dim=(2, 3))  # Eq. 2: global average pool
    assert out.similarity.shape == (3, 2, 2) and out.cross_similarity.shape == (3, 3, 2, 2)
    for i in range(3):
        for j in range(3):
            for y in range(2):
                for x in range(2):
                    expected = F.cosine_similarity(visual[i, :, y, x], audio[j], dim=0)
                    assert torch.allclose(out.cross_similarity[i, j, y, x], expected, atol=1e-5)
        assert torch.equal(out.similarity[i], out.cross_similarity[i, i])


def test_flow_matters_with_a_prior_and_is_ignored_without():
    image, flow, spectrogram = inputs(2, 64)
    model = build_model("htf", **SMALL).eval()
    with torch.no_grad():
        assert not torch.allclose(model(image, flow, spectrogram).similarity, model(image, -flow, spectrogram).similarity)
    lvs = build_model("lvs", **SMALL).eval()
    assert not hasattr(lvs, "flownet") or lvs.flownet is None
    with torch.no_grad():
        assert torch.equal(lvs(image, flow, spectrogram).similarity, lvs(image, None, spectrogram).similarity)


def test_flow_fusion_is_an_argument_scaling_by_normalised_block_max_of_flow_magnitude():
    image, flow, spectrogram = inputs(2, 64)
    flow[1] = 0
    model = build_model("htf", **SMALL).eval()
    config = copy.deepcopy(model.config)
    with torch.no_grad():
        fused, base = model(image, flow, spectrogram, flow_fusion=0.5), model(image, flow, spectrogram)
    magnitude = torch.sqrt(flow[:, 0] ** 2 + flow[:, 1] ** 2)  # B x 64 x 64
    blocks = magnitude.view(2, 2, 32, 2, 32).amax(dim=(2, 4))  # 2 x 2 map, 32-pixel cells
    motion = torch.zeros_like(blocks)
    motion[0] = blocks[0] / blocks[0].max()
    expected = base.cross_similarity * (1 + 0.5 * motion[:, None])
    assert torch.allclose(fused.cross_similarity, expected, atol=1e-6)
    assert torch.allclose(fused.similarity[1], base.similarity[1])  # zero flow: unchanged
    assert model.config == config  # nothing was written into the model
    with pytest.raises(HearflowError, match="non-negative"):
        model(image, flow, spectrogram, flow_fusion=-1.0)
    with pytest.raises(HearflowError, match="needs the flow"):
        build_model("lvs", **SMALL).eval()(image, None, spectrogram, flow_fusion=1.0)


def test_forward_is_similarity_of_embed_and_embed_holds_every_learnable_part():
    image, flow, spectrogram = inputs(3, 64)
    model = build_model("htf", prior_gate=True, **SMALL).eval()
    with torch.no_grad():
        features = model.embed(image, flow, spectrogram)
        halves = model.similarity(features)
        whole = model(image, flow, spectrogram)
    assert features.visual.shape == (3, 64, 2, 2) and features.audio.shape == (3, 64)
    torch.testing.assert_close(features.visual.norm(dim=1), torch.ones(3, 2, 2))
    assert torch.equal(halves.cross_similarity, whole.cross_similarity)
    assert torch.equal(halves.similarity, torch.diagonal(whole.cross_similarity).permute(2, 0, 1))
    # Every parameter (the gate included) gets a gradient through embed alone.
    model.train()
    features = model.embed(image, flow, spectrogram)
    model.similarity(features).cross_similarity.square().sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and {name for name, p in model.named_parameters() if p.grad is not None} == trainable


def test_output_shapes_at_full_size():
    for preset in ("htf", "htf-released-maxpool"):
        model = build_model(preset).eval()
        with torch.no_grad():
            out = model(*inputs(2, 224, frames=100))
        assert out.similarity.shape == (2, 7, 7) and out.cross_similarity.shape == (2, 2, 7, 7)
        assert out.similarity.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("preset", [*PRESETS, *DEMO_PRESETS])
def test_every_preset_gives_maps_of_its_size_and_gradients_reach_exactly_the_trainable_parameters(preset):
    model = build_model(config=demo_config(preset)) if preset in DEMO_PRESETS else build_model(preset, **SMALL)
    m, size = model.config.model, model.config.data.image_size
    side = size // m.map_stride
    out = model(*inputs(3, size))
    assert out.similarity.shape == (3, side, side) and out.cross_similarity.shape == (3, 3, side, side)
    lvs_loss(out.cross_similarity).backward()

    trainable = {"audnet"}
    if not m.vision_frozen:
        trainable.add("imgnet")
    if m.prior != "none":
        trainable.add("flowatt")
        if m.flow_encoder == "resnet18":
            trainable.add("flownet")
    trainable |= {name for pair in model.heads for name in pair}  # projection heads (EZ-VSL, SLAVC)
    momentum = {f"momentum_{name}" for name in trainable | {"imgnet"}} if m.momentum else set()
    present = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert present == trainable | {"imgnet"} | momentum
    for name, parameter in model.named_parameters():
        owner = name.split(".")[0]
        assert parameter.requires_grad == (owner in trainable), name
        assert (parameter.grad is not None) == (owner in trainable), name
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name
    closed_gate = {"flownet", "flowatt"} if m.prior_gate else set()  # gamma = 0: nothing flows past it yet
    for owner in trainable:
        grads = [p.grad.abs().sum() for n, p in model.named_parameters()
                 if n.startswith(owner + ".") and n != "flowatt.gamma"]
        if owner in closed_gate:
            assert sum(grads) == 0, owner
        else:
            assert sum(grads) > 0, owner
    if m.prior_gate:
        assert model.flowatt.gamma.grad.abs() > 0  # the gate itself learns from the first step


def train_one_step(model):
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    lvs_loss(model(*inputs(4, 64)).cross_similarity).backward()
    optimizer.step()


def test_frozen_vision_encoder_keeps_weights_and_batchnorm_statistics():
    model = build_model("htf", **SMALL)
    model.train()
    assert all(not module.training for module in model.imgnet.modules())
    assert model.audnet.training and model.flownet.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_one_step(model)
    after = model.state_dict()
    for name, value in after.items():
        if name.startswith("imgnet."):
            assert torch.equal(value, before[name]), name
    assert not torch.equal(after["flownet.bn1.running_mean"], before["flownet.bn1.running_mean"])
    assert not torch.equal(after["audnet.conv1.weight"], before["audnet.conv1.weight"])


def test_released_bn_drift_updates_frozen_statistics_but_not_weights():
    model = build_model("htf-released", **SMALL)
    model.train()
    assert model.imgnet.training
    before = {k: v.clone() for k, v in model.imgnet.state_dict().items()}
    train_one_step(model)
    after = model.imgnet.state_dict()
    for name in before:
        changes = not torch.equal(after[name], before[name])
        assert changes == name.endswith(("running_mean", "running_var", "num_batches_tracked")), name
