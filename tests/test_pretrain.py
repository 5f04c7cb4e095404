"""hearflow.pretrain: synthetic classifier pre-training and `model.pretrained_weights` files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hearflow import build_model
from hearflow.data.transforms import image_flow_tensors
from hearflow.errors import HearflowError
from hearflow.model.encoders import encoder_weights_state_dict
from hearflow.synthetic.pretrain import (
    make_pretrained_weights,
    object_images,
    pretrain_image_encoder,
    pretraining_classes,
    save_encoder_weights,
)
from hearflow.synthetic.plan import SynthSettings, synth_classes
from hearflow.synthetic.render import render_object_image
from hearflow.synthetic.presets import demo_config


def test_pretraining_classes_are_not_the_benchmarks():
    assert list(pretraining_classes(16)) == list(range(16, 32))
    assert set(pretraining_classes(32)).isdisjoint(range(32))
    with pytest.raises(HearflowError, match="generator has"):
        pretraining_classes(100)


def test_object_images_are_balanced_deterministic_and_of_their_class():
    classes = pretraining_classes(16)
    images, labels = object_images(32, seed=5, classes=classes)
    assert images.shape == (32, 128, 128, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [2] * 16
    again, _ = object_images(32, seed=5, classes=classes)
    assert np.array_equal(images, again)
    other, _ = object_images(32, seed=6, classes=classes)
    assert not np.array_equal(images, other)
    # the object's colour is its class's hue (+- 10 degrees jitter): compare the most
    # saturated pixels' hue with the class's
    import cv2

    for image, label in zip(images[:16], labels[:16]):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(float)
        vivid = hsv[hsv[:, 1] > 120]
        assert len(vivid) > 300  # the object covers a good part of the frame
        hue = np.median(vivid[:, 0]) * 360 / 256
        expected = synth_classes(32)[classes[label]].hue
        assert min(abs(hue - expected), 360 - abs(hue - expected)) < 20, (label, hue, expected)


def test_an_object_image_is_a_still_frame_of_one_object():
    settings = SynthSettings(classes=16)
    image = render_object_image(settings, seed=1, index=0, class_index=3)
    assert image.shape == (128, 128, 3)
    with pytest.raises(HearflowError, match="not among the 16 classes"):
        render_object_image(settings, seed=1, index=0, class_index=16)


@pytest.mark.slow
def test_pretraining_learns_to_name_held_out_objects():
    """4 classes (one hue: shape and texture tell them apart) x 40 images for 8 epochs.

    The training accuracy, and a nearest-centroid rule on the trunk's own features of
    held-out images, must be far above what an untrained trunk gives.
    """
    config = demo_config("demo-lvs")
    classes = range(16, 20)
    images, labels = object_images(160, seed=3, classes=classes)
    state, accuracy = pretrain_image_encoder(config, images, labels, epochs=8, batch_size=32, progress=False)
    assert accuracy > 0.6
    held_out, truth = object_images(64, seed=4, classes=classes)
    trunk = build_model(config=config).imgnet
    trunk.load_state_dict(state)
    trunk.eval()
    still = np.zeros((128, 128, 2), np.float32)

    def features(batch_images):
        with torch.no_grad():
            batch = torch.stack([image_flow_tensors(image, still, config.data, False)[0] for image in batch_images])
            return trunk(batch).mean(dim=(2, 3)).numpy()

    # nearest class centroid of the training features: the trunk alone separates the classes
    train_features = features(images)
    centroids = np.stack([train_features[labels == k].mean(axis=0) for k in range(4)])
    predicted = np.argmin(((features(held_out)[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    # measured: 0.97 (training accuracy 0.99); a random trunk gives 0.39-0.48 on the same images
    assert (predicted == truth).mean() > 0.8


def test_pretrained_weights_file_initialises_the_encoders(tmp_path):
    config = demo_config("demo-htf", **{"model.flow_encoder": "resnet18", "model.vision_pretrained": True,
                                          "model.flow_pretrained": True, "model.flow_conv1_init": "rgb-mean"})
    source = build_model(config=config).imgnet.state_dict()
    state = {name: torch.randn_like(tensor) if tensor.is_floating_point() else tensor for name, tensor in source.items()}
    path = tmp_path / "vision.pt"
    save_encoder_weights(path, state, config.model.width, note="test")
    config.model.pretrained_weights = str(path)
    model = build_model(config=config, pretrained=True)
    for name, value in model.imgnet.state_dict().items():
        assert torch.equal(value, state[name]), name
    flow_state = model.flownet.state_dict()
    assert torch.equal(flow_state["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    expected_conv1 = state["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 2, 1, 1)
    assert torch.equal(flow_state["conv1.weight"], expected_conv1)
    # without pretrained=True the file is not read
    assert not torch.equal(build_model(config=config).imgnet.conv1.weight, state["conv1.weight"])


def test_bad_pretrained_weights_files_are_clear_errors(tmp_path):
    config = demo_config("demo-lvs", **{"model.vision_pretrained": True})
    config.model.pretrained_weights = str(tmp_path / "missing.pt")
    with pytest.raises(HearflowError, match="missing.pt does not exist"):
        build_model(config=config, pretrained=True)
    other = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(HearflowError, match="not a file of encoder weights"):
        encoder_weights_state_dict(other, 16)
    wide = tmp_path / "wide.pt"
    save_encoder_weights(wide, build_model(config=demo_config("cpu-small"), width=32).imgnet.state_dict(), 32)
    with pytest.raises(HearflowError, match="width 32, the model has model.width 16"):
        encoder_weights_state_dict(wide, 16)


def test_make_pretrained_weights_is_made_once(tmp_path, monkeypatch):
    import hearflow.synthetic.pretrain as pretrain

    calls = []
    config = demo_config("demo-lvs")

    def fake_images(count, seed, classes):
        calls.append((count, seed, classes))
        return np.zeros((count, 16, 16, 3), np.uint8), np.arange(count) % len(classes)

    def fake_training(config, images, labels, epochs, seed, progress):
        return build_model(config=config).imgnet.state_dict(), 1.0

    monkeypatch.setattr(pretrain, "object_images", fake_images)
    monkeypatch.setattr(pretrain, "pretrain_image_encoder", fake_training)
    path = tmp_path / "w.pt"
    assert make_pretrained_weights(path, config, 16, seed=2, images_per_class=3, progress=False) == path
    assert calls == [(48, 1002, range(16, 32))]
    make_pretrained_weights(path, config, 16, seed=2, images_per_class=3, progress=False)
    assert len(calls) == 1
    assert encoder_weights_state_dict(path, 16).keys() == build_model(config=config).imgnet.state_dict().keys()
