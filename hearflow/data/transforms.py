"""The one preprocessing path of training, evaluation and localization.

- `sample_tensors`: one sample (frame, flow, audio) -> the model's input tensors, the
  recipe the dataset (training and evaluation) and localize share; built from:
- `fit_audio`: a stored audio window resampled and cropped/tiled to the model's window;
- `spectrogram`: the released audio front end, ``scipy.signal.spectrogram`` (Tukey
  window, density scaling), ``log(S + log_eps)``, then ``(x - spec_mean) / spec_std``.
- `image_flow_tensors`: frame and optical flow to model inputs. Test: both resized to
  S x S. Train: short side to ``train_resize`` (aspect kept), one random S x S crop and
  a horizontal flip with p = 0.5, the same for the frame and its flow.

Resizing is Pillow's (installed with torchvision), as in the released code, which
resized PIL images: the frame with antialiased bicubic (OpenCV's ``INTER_CUBIC`` does
not antialias and differs by ~6 grey levels on textured frames shrunk to 224), signed
flow with antialiased bilinear (no overshoot of the motion field), ``official`` flow as
the released 8-bit flow images (bicubic).

Flow encodings (``data.flow_encoding``):
- ``signed``: pixels of motion (dx, dy) at the flow's own resolution; a resize scales
  dx by new width / old width and dy by new height / old height, and a flip negates dx
  when ``data.flip_negates_flow`` (the released code did not).
- ``official``: the released storage, ``clip(flow, 0, 255)`` as 8-bit images (negative
  motion lost), resized like images, divided by 255; never rescaled or negated.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
from PIL import Image

from hearflow.config import DataConfig
from hearflow.errors import HearflowError
from hearflow.media.audio import resample

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def audio_window_length(data_config: DataConfig) -> int:
    """Samples in the model's audio window: ``seconds * sample_rate`` (48,000 at 16 kHz, 3 s)."""
    return int(round(data_config.seconds * data_config.sample_rate))


def fit_audio(audio: np.ndarray, sample_rate: int, data_config) -> np.ndarray:
    """The model's audio window from a stored one: resampled to ``data.sample_rate``,
    then centre-cropped or tiled to ``audio_window_length`` samples (float32)."""
    if sample_rate != data_config.sample_rate:
        audio = resample(audio, sample_rate, data_config.sample_rate)
    length = audio_window_length(data_config)
    if len(audio) == 0:
        return np.zeros(length, dtype=np.float32)
    if len(audio) < length:
        audio = np.tile(audio, -(-length // len(audio)))[:length]
    start = (len(audio) - length) // 2
    return np.asarray(audio[start : start + length], dtype=np.float32)


def sample_tensors(
    frame: np.ndarray,
    flow: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    data_config: DataConfig,
    train: bool,
    rng: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One sample's model inputs: ``{"image": 3 x S x S, "flow": 2 x S x S, "spectrogram": 1 x F x T}``.

    frame, flow: as `image_flow_tensors` takes them; audio: mono float32 at
    ``sample_rate`` Hz, fitted to the model's window by `fit_audio`; train and rng: the
    random crop and flip of training (`image_flow_tensors`).
    """
    image, flow_tensor = image_flow_tensors(frame, flow, data_config, train, rng)
    window = fit_audio(audio, sample_rate, data_config)
    spec = torch.from_numpy(np.ascontiguousarray(spectrogram(window, data_config)))
    return {"image": image, "flow": flow_tensor, "spectrogram": spec}


def spectrogram(audio: np.ndarray, data_config: DataConfig) -> np.ndarray:
    """Float32 ``1 x F x T`` log spectrogram of a mono window (F = nperseg // 2 + 1).

    Exactly the released front end, computed in float64 like the released code:
    ``scipy.signal.spectrogram(audio, sample_rate, nperseg, noverlap)``, then
    ``(log(S + log_eps) - spec_mean) / spec_std``. 3 s at 16 kHz: 1 x 257 x 200;
    at 22,050 Hz: 1 x 257 x 276.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1 or len(audio) < data_config.nperseg:
        raise HearflowError(
            f"the spectrogram needs a mono window of at least {data_config.nperseg} samples, got shape {audio.shape}"
        )
    _, _, power = scipy.signal.spectrogram(
        audio, data_config.sample_rate, nperseg=data_config.nperseg, noverlap=data_config.noverlap
    )
    spec = (np.log(power + data_config.log_eps) - data_config.spec_mean) / data_config.spec_std
    return spec.astype(np.float32)[None]


def image_flow_tensors(
    frame: np.ndarray,
    flow: np.ndarray,
    data_config: DataConfig,
    train: bool,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs from a key frame and its flow: (image 3 x S x S, flow 2 x S x S) float32.

    frame: RGB uint8 H x W x 3. flow: float32 h x w x 2 (dx, dy), signed pixels at its own
    resolution, or the released layout's 0..255 values; it is resized to the frame's
    geometry whatever its size. The image is ImageNet-normalised; the flow is in
    ``data_config.flow_encoding``. train: random crop and flip drawn from ``rng`` (crop
    offsets, then the flip), a fresh generator when None; test: resize to S x S.
    """
    frame = np.asarray(frame)
    flow = np.asarray(flow, dtype=np.float32)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise HearflowError(f"a frame must be RGB uint8 H x W x 3, got {frame.dtype} {frame.shape}")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise HearflowError(f"a flow must be h x w x 2 (dx, dy), got {flow.shape}")
    size = data_config.image_size
    height, width = frame.shape[:2]
    target = _short_side_to(width, height, data_config.train_resize) if train else (size, size)
    image = np.asarray(Image.fromarray(frame).resize(target, Image.BICUBIC))
    signed = data_config.flow_encoding == "signed"
    flow = _resize_signed_flow(flow, target) if signed else _resize_official_flow(flow, target)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        top = int(rng.integers(0, target[1] - size + 1))
        left = int(rng.integers(0, target[0] - size + 1))
        image = image[top : top + size, left : left + size]
        flow = flow[top : top + size, left : left + size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
            flow = flow[:, ::-1]
            if signed and data_config.flip_negates_flow:
                flow = flow * np.array([-1, 1], dtype=np.float32)
    image = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    return (
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))),
    )


def _short_side_to(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side ``short`` and the long side scaled and truncated
    (torchvision's ``Resize(int)``, as the released training)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _resize_signed_flow(flow: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Each component resized (antialiased bilinear) and rescaled to pixels of the new size."""
    height, width = flow.shape[:2]
    scale = (target[0] / width, target[1] / height)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(flow[..., c])).resize(target, Image.BILINEAR)) * scale[c]
        for c in range(2)
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _resize_official_flow(flow: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """The released flow images: clip to [0, 255], 8-bit, bicubic resize, / 255."""
    levels = np.clip(np.rint(flow), 0, 255).astype(np.uint8)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(levels[..., c])).resize(target, Image.BICUBIC)) for c in range(2)]
    return np.stack(channels, axis=-1).astype(np.float32) / 255
