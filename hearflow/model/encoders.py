"""The image, audio and flow encoders: ResNet-18 trunks with their initialisations.

- image: 3-channel trunk -> ``B x 8w x h x w`` map; optionally frozen (no gradients,
  BatchNorm kept in eval mode unless ``bn_drift`` reproduces the released code);
- audio: 1-channel trunk, global average pool (Eq. 2) or max pool (released),
  L2-normalised ``B x 8w`` vector;
- flow: 2-channel trunk -> ``B x 8w x h x w`` map, or the parameter-free max pool of
  the flow itself to the map size (Table 5): per channel (released) or by magnitude.

ImageNet weights come from torchvision's weights API (its cache under
``$TORCH_HOME/hub/checkpoints``); nothing here downloads unless asked to.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from hearflow.errors import HearflowError, option
from hearflow.model.resnet import ResNetTrunk

IMAGENET_WIDTH = 64  # torchvision's ResNet-18: the only width ImageNet weights exist for
WITHOUT_PRETRAINED_WEIGHTS = (  # how a message says to start encoders random, for the CLI and for Python
    f"{option('--no-pretrained', 'pretrained=False')} for every encoder, or --set model.vision_pretrained=false "
    "/ --set model.flow_pretrained=false for one (Python: those config fields)"
)


class ImageEncoder(ResNetTrunk):
    """The vision trunk. ``frozen``: no gradients and, unless ``bn_drift``, BatchNorm in eval mode.

    The released code froze the parameters but left BatchNorm in training mode, so
    its running statistics drifted during training; ``bn_drift=True`` reproduces that.
    """

    def __init__(self, width: int = 64, map_stride: int = 32, frozen: bool = False, bn_drift: bool = False):
        super().__init__(3, width, map_stride)
        self.frozen = frozen
        self.bn_drift = bn_drift
        if frozen:
            self.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        keep_eval = self.frozen and not self.bn_drift
        return super().train(mode and not keep_eval)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return super().forward(image)
        return super().forward(image)


class AudioEncoder(ResNetTrunk):
    """Spectrogram ``B x 1 x F x T`` -> L2-normalised ``B x 8w`` vector;
    ``normalize=False``: the pooled vector as it is (a projection head follows, as in EZ-VSL).

    ``pool``: ``"max"`` (the released code's global max pool over the trunk's map) or
    ``"avg"`` (Eq. 2's global average pool). Initialised as released: Kaiming normal
    (fan_out) convolutions, BatchNorm weight ~ N(1, 0.02) and bias 0.
    """

    def __init__(self, width: int = 64, pool: str = "max", normalize: bool = True) -> None:
        super().__init__(1, width, 32)
        if pool not in ("max", "avg"):
            raise HearflowError(f"model.audio_pool is {pool!r}; choose one of avg, max")
        self.pool, self.normalize = pool, normalize
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, mean=1.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        trunk = super().forward(spectrogram)
        features = trunk.amax(dim=(2, 3)) if self.pool == "max" else trunk.mean(dim=(2, 3))
        return F.normalize(features, dim=1) if self.normalize else features


def flow_encoder(width: int = 64, map_stride: int = 32, conv1_init: str = "random") -> ResNetTrunk:
    """The 2-channel flow trunk, ``B x 2 x S x S`` -> ``B x 8w x S/stride x S/stride``.

    ``conv1_init="random"`` gives conv1 PyTorch's default initialisation, as the
    released code's freshly created conv1 had (the rest of the trunk is initialised
    as torchvision does, then possibly overwritten by `load_trunk_weights`).
    """
    trunk = ResNetTrunk(2, width, map_stride)
    if conv1_init == "random":
        trunk.conv1.reset_parameters()
    return trunk


def max_pool_flow(flow: torch.Tensor, map_size: tuple[int, int], pool: str = "channel-max") -> torch.Tensor:
    """Table 5's flow encoder: ``B x 2 x S x S`` (dx, dy) -> ``B x 2 x h x w`` by one adaptive max pool.

    ``"channel-max"`` (released): dx and dy pooled separately, so of signed flow only the
    largest rightward dx and downward dy of a cell survive (leftward motion next to a still
    pixel pools to 0). ``"magnitude"``: each cell keeps the (dx, dy) vector of its largest
    magnitude, signs included, so motion in any direction counts.
    """
    if pool == "channel-max":
        return F.adaptive_max_pool2d(flow, map_size)
    if pool != "magnitude":
        raise HearflowError(f"model.flow_pool is {pool!r}; choose one of magnitude, channel-max")
    magnitude = flow.float().pow(2).sum(dim=1, keepdim=True)
    _, where = F.adaptive_max_pool2d(magnitude, map_size, return_indices=True)  # B x 1 x h x w, flat H*W
    flat = flow.flatten(2)
    index = where.flatten(2).expand(-1, flow.shape[1], -1)
    return flat.gather(2, index).view(flow.shape[0], flow.shape[1], *where.shape[2:])


def imagenet_weights_file() -> str:
    """Where torchvision's cache keeps the ImageNet ResNet-18 weights (may not exist)."""
    from torchvision.models import ResNet18_Weights

    name = os.path.basename(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights without ``fc``, from the cache or the network.

    Raises HearflowError saying how to proceed when they cannot be read or fetched.
    """
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise HearflowError(
            f"cannot load the ImageNet ResNet-18 weights ({weights.url}): {error}. Either start without them: "
            f"{WITHOUT_PRETRAINED_WEIGHTS}; or download that file and place it at {imagenet_weights_file()}"
        ) from error
    return {name: tensor for name, tensor in state.items() if not name.startswith("fc.")}


ENCODER_WEIGHTS_FORMAT = "hearflow-encoder-weights"  # files of `hearflow.synthetic.pretrain.save_encoder_weights`


def encoder_weights_state_dict(path: str | Path, width: int) -> dict[str, torch.Tensor]:
    """Trunk weights from a ``model.pretrained_weights`` file, checked against the model's ``width``.

    Raises HearflowError naming the file when it is missing, unreadable, not such a
    file, or holds a trunk of another width.
    """
    path = Path(path)
    if not path.is_file():
        raise HearflowError(f"model.pretrained_weights: {path} does not exist (use 'imagenet' or a file "
                            "written by hearflow.synthetic.pretrain.save_encoder_weights)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: say which and why
        raise HearflowError(f"model.pretrained_weights: cannot read {path}: {error}") from None
    if not isinstance(saved, dict) or saved.get("format") != ENCODER_WEIGHTS_FORMAT:
        raise HearflowError(f"model.pretrained_weights: {path} is not a file of encoder weights written by hearflow")
    if saved["width"] != width:
        raise HearflowError(f"model.pretrained_weights: {path} holds a trunk of width {saved['width']}, "
                            f"the model has model.width {width}")
    return saved["state_dict"]


def load_trunk_weights(trunk: ResNetTrunk, weights: dict[str, torch.Tensor], conv1_init: str | None = None) -> None:
    """Copy pre-trained trunk weights (ImageNet's, or `hearflow.synthetic.pretrain`'s) into ``trunk`` (in place).

    ``conv1_init`` applies to a 2-channel flow trunk: ``"random"`` keeps the trunk's
    own conv1, ``"rgb-mean"`` uses the pre-trained conv1 averaged over RGB and repeated
    over the two flow channels. ``None`` copies conv1 as is (3-channel image trunk).
    """
    state = dict(weights)
    if conv1_init == "random":
        state["conv1.weight"] = trunk.conv1.weight.detach().clone()
    elif conv1_init == "rgb-mean":
        in_channels = trunk.conv1.in_channels
        state["conv1.weight"] = state["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    trunk.load_state_dict(state, strict=True)
