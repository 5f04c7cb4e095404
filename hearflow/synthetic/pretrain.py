"""Pre-train an image encoder as a classifier on synthetic single-object images.

The flow-prior study's stand-in for ImageNet (the paper's Table 4 "pretrain vision"
rows; `hearflow.synthetic.study`): the config's image trunk, with a linear head on its
globally averaged map, learns to name the class of the one object in each image
(`hearflow.synthetic.render.render_object_image`). The classes are ones the benchmark does not
use (`pretraining_classes`), as ImageNet's are not VGG-Sound's. The trunk's weights
are saved in the file format ``model.pretrained_weights`` reads, so
``build_model(config=..., pretrained=True)`` starts the image encoder, and a ResNet-18
flow encoder (conv1 as ``model.flow_conv1_init`` says), from them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hearflow.config import Config
from hearflow.data.transforms import image_flow_tensors
from hearflow.errors import HearflowError
from hearflow.io import atomic_file
from hearflow.model.encoders import ENCODER_WEIGHTS_FORMAT, ImageEncoder
from hearflow.synthetic.plan import MAX_CLASSES, SynthSettings
from hearflow.synthetic.render import render_object_image

def pretraining_classes(benchmark_classes: int) -> range:
    """The classes to pre-train on: the next ``benchmark_classes`` after the benchmark's own.

    With the demo's 16 classes these are the same 4 shapes and textures in 4 other
    hues; with the study's 32 (every shape and hue) the same shapes and hues in other
    textures.
    """
    if not 2 <= 2 * benchmark_classes <= MAX_CLASSES:
        raise HearflowError(f"cannot pre-train on {benchmark_classes} other classes: the generator has {MAX_CLASSES}")
    return range(benchmark_classes, 2 * benchmark_classes)


def object_images(
    count: int, seed: int, classes: range, settings: SynthSettings = SynthSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` single-object images (uint8 N x H x W x 3) and labels (int64 N, 0-based in ``classes``).

    Labels cycle through the classes, so every class has ``count / len(classes)`` images
    (rounded); image i is `render_object_image` (seed, i) of its class.
    """
    needed = dataclasses.replace(settings, classes=max(settings.classes, classes.stop))
    labels = np.arange(count, dtype=np.int64) % len(classes)
    images = np.stack([render_object_image(needed, seed, i, classes[label]) for i, label in enumerate(labels)])
    return images, labels


class _Classifier(nn.Module):
    def __init__(self, config: Config, n_classes: int) -> None:
        super().__init__()
        self.trunk = ImageEncoder(config.model.width, config.model.map_stride)
        self.head = nn.Linear(8 * config.model.width, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(image).mean(dim=(2, 3)))


def pretrain_image_encoder(
    config: Config,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], float]:
    """Train the config's image trunk + a linear head to classify ``images`` (N x H x W x 3 uint8).

    Inputs go through the training transforms of `hearflow.data.transforms` (short side
    to ``data.train_resize``, random ``data.image_size`` crop and flip), Adam, cross
    entropy. Returns (the trunk's state dict, accuracy over the last epoch).
    """
    if len(images) != len(labels) or len(images) < batch_size:
        raise HearflowError(f"need at least one batch of {batch_size} labelled images, got {len(images)}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = _Classifier(config, int(labels.max()) + 1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    still = np.zeros(images.shape[1:3] + (2,), np.float32)
    targets = torch.from_numpy(labels)
    accuracy = 0.0
    bar = tqdm(range(epochs), desc="pre-train vision", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(images), generator=generator)
        correct = seen = 0
        for first in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[first : first + batch_size]
            batch = torch.stack([image_flow_tensors(images[i], still, config.data, True, rng)[0] for i in chosen.tolist()])
            logits = model(batch)
            loss = F.cross_entropy(logits, targets[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(dim=1) == targets[chosen]).sum())
            seen += len(chosen)
        accuracy = correct / seen
        bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy:.2f}")
    return {name: tensor.detach().clone() for name, tensor in model.trunk.state_dict().items()}, accuracy


def save_encoder_weights(path: str | Path, state: dict[str, torch.Tensor], width: int, **info) -> None:
    """Write trunk weights (ResNet-18 key names, no ``fc``) for ``model.pretrained_weights``, atomically.

    `hearflow.model.encoders.encoder_weights_state_dict` reads them back.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save({"format": ENCODER_WEIGHTS_FORMAT, "width": int(width), "state_dict": state, "info": info}, handle)


def make_pretrained_weights(
    path: str | Path,
    config: Config,
    benchmark_classes: int,
    seed: int,
    images_per_class: int = 100,
    epochs: int = 6,
    progress: bool = True,
) -> Path:
    """Pre-train on `pretraining_classes` and save to ``path``, unless it is already there; returns it.

    The images come from seed ``1000 + seed`` (never a clip seed of the demo or the study).
    """
    path = Path(path)
    if path.is_file():
        return path
    classes = pretraining_classes(benchmark_classes)
    images, labels = object_images(images_per_class * len(classes), 1000 + seed, classes)
    state, accuracy = pretrain_image_encoder(config, images, labels, epochs=epochs, seed=seed, progress=progress)
    save_encoder_weights(path, state, config.model.width, classes=[classes.start, classes.stop], seed=seed,
                         images=len(images), epochs=epochs, train_accuracy=accuracy)
    return path
