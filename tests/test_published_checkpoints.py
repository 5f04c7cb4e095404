"""EZ-VSL's and SLAVC's published checkpoints: `hearflow.load` tells their layouts and gives their maps.

The authors' modules are restated below from their public code (randomly initialised, nothing is
downloaded): torchvision ResNet-18 trunks ``imgnet`` / ``audnet`` (1-channel conv1, max-pooled audio),
1x1-conv and linear projections, and for SLAVC two heads and ``momentum_*`` copies whose maps it
evaluates with (``--use_mom_eval``). Their ``best.pth`` is ``{"model": state_dict}`` saved from
DistributedDataParallel (``module.`` prefix)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fixtures_train import synth_set  # noqa: F401
from hearflow import load
from hearflow.evaluate import evaluate
from hearflow.model.encoders import imagenet_weights_file


def _image_trunk():
    trunk = torchvision.models.resnet18(weights=None)
    trunk.avgpool, trunk.fc = nn.Identity(), nn.Identity()
    return trunk


def _audio_trunk():
    trunk = torchvision.models.resnet18(weights=None)
    trunk.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk.avgpool, trunk.fc = nn.AdaptiveMaxPool2d((1, 1)), nn.Identity()
    return trunk


def _randomise_statistics(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.2, 0.2)
            layer.running_var.uniform_(0.5, 1.5)


class AuthorsEZVSL(nn.Module):
    """EZ-VSL's modules as its model.py names them, and its eval-mode map (before / tau)."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.imgnet, self.audnet = _image_trunk(), _audio_trunk()
        self.img_proj, self.aud_proj = nn.Conv2d(512, dim, kernel_size=(1, 1)), nn.Linear(512, dim)

    def maps(self, image, spectrogram):
        img = F.normalize(self.img_proj(self.imgnet(image).unflatten(1, (512, 7, 7))), dim=1)
        aud = F.normalize(self.aud_proj(self.audnet(spectrogram)), dim=1)
        return torch.einsum("nchw,nc->nhw", img, aud)


class AuthorsSLAVC(nn.Module):
    """SLAVC's modules as its model.py names them, and its use_mom_eval map: the momentum heads' mean."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        for prefix in ("", "momentum_"):
            setattr(self, prefix + "imgnet", _image_trunk())
            setattr(self, prefix + "audnet", _audio_trunk())
            for index in (1, 2):
                setattr(self, f"{prefix}img_proj{index}", nn.Conv2d(512, dim, kernel_size=(1, 1)))
                setattr(self, f"{prefix}aud_proj{index}", nn.Linear(512, dim))

    def maps(self, image, spectrogram):
        img = self.momentum_imgnet(image).unflatten(1, (512, 7, 7))
        aud = self.momentum_audnet(spectrogram)
        heads = [torch.einsum("nchw,nc->nhw", F.normalize(getattr(self, f"momentum_img_proj{i}")(img), dim=1),
                              F.normalize(getattr(self, f"momentum_aud_proj{i}")(aud), dim=1)) for i in (1, 2)]
        return (heads[0] + heads[1]) / 2


def _published(tmp_path, authors: nn.Module, name: str):
    torch.manual_seed(7)
    _randomise_statistics(authors)
    path = tmp_path / f"{name}_best.pth"
    state = {f"module.{key}": value for key, value in authors.state_dict().items()}
    torch.save({"model": state, "epoch": 20, "best_cIoU": 0.0}, path)
    return path, authors.eval()


@pytest.mark.parametrize("authors, preset", [(AuthorsEZVSL, "ezvsl"), (AuthorsSLAVC, "slavc")])
def test_published_layouts_load_and_give_the_authors_maps(tmp_path, authors, preset):
    torch.manual_seed(0)
    path, reference = _published(tmp_path, authors(dim=64), preset)
    model = load(path)
    assert model.config.preset == preset and model.config.model.projection == 64
    generator = torch.Generator().manual_seed(1)
    image, spectrogram = torch.randn(2, 3, 224, 224, generator=generator), torch.randn(2, 1, 257, 100, generator=generator)
    with torch.no_grad():
        ours = model(image, None, spectrogram).similarity
        theirs = reference.maps(image, spectrogram)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    if preset == "slavc":  # the maps are the momentum encoders', not the online ones
        with torch.no_grad():
            reference.momentum_img_proj1.weight.add_(0.5)
            assert not torch.allclose(reference.maps(image, spectrogram), ours, atol=1e-3)


def test_evaluate_scores_a_published_checkpoint_with_ogl_off_and_on(synth_set, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    path, _ = _published(tmp_path, AuthorsEZVSL(dim=32), "ezvsl")
    torch.manual_seed(3)  # ImageNet weights for the saliency trunk, made here and placed in the empty cache
    os.makedirs(os.path.dirname(imagenet_weights_file()), exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet_weights_file())
    common = dict(workers=0, progress=False, backend="torch", batch_size=8)
    off = evaluate(path, synth_set.prepared, synth_set.annotations, **common)
    on = evaluate(path, synth_set.prepared, synth_set.annotations, object_fusion=0.6, **common)
    assert (off["object_fusion"], on["object_fusion"], on["object_weights"]) == (0.0, 0.6, "imagenet")
    assert off["n"] == on["n"] > 0 and 0 <= on["mean_ciou"] <= 1 and on["mean_ciou"] != off["mean_ciou"]
