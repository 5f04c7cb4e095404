"""The one preprocessing path of training, evaluation and localization.

- `sample_tensors`: one sample (frame, flow, audio) -> the model's input tensors, the
  recipe the dataset (training and evaluation) and localize share; built from:
- `fit_audio`: a stored audio window resampled and cropped/tiled to the model's window;
- `spectrogram`: the released audio front end, ``scipy.signal.spectrogram`` (Tukey
  window, density scaling), ``log(S + log_eps)``, then ``(x - spec_mean) / spec_std``,
  in float64 (evaluation and localize); `torch_spectrogram` computes the same with
  ``torch.stft`` in float32 for batches on any device (training, within 1e-5 of it);
- `image_flow_tensors`: frame and optical flow to model inputs. Test: both resized to
  S x S. Train: short side to ``train_resize`` (aspect kept), one random S x S crop and
  a horizontal flip with p = 0.5 (`train_crop`), the same for the frame and its flow.

The test transform is the evaluation protocol and is computed exactly as the released
code did. The training transform resizes the whole frame as the released training did,
but with torch's antialiased bicubic on 8-bit levels (a fixed-point port of Pillow's
filter, faster: it rounds differently on ~0.3 % of the pixels, by one grey level,
rarely two, with no bias), resizes only the crop's part of the flow
(Pillow's ``box``: the same filter at the same positions, ~1e-6 of the value apart) and
computes the spectrogram in float32 (`torch_spectrogram`): the same distribution of
inputs, faster (bench/loader.py).

Resizing is Pillow's (installed with torchvision; for the training frame torch's port
of it, above), as in the released code, which resized PIL images: the frame with
antialiased bicubic (OpenCV's ``INTER_CUBIC`` does not antialias and differs by ~6 grey
levels on textured frames shrunk to 224), signed
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

import functools
from dataclasses import dataclass

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from PIL import Image

from hearflow.config import DataConfig
from hearflow.errors import HearflowError
from hearflow.media.audio import middle_window, resample

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def audio_window_length(data_config: DataConfig) -> int:
    """Samples in the model's audio window: ``seconds * sample_rate`` (48,000 at 16 kHz, 3 s)."""
    return int(round(data_config.seconds * data_config.sample_rate))


def fit_audio(audio: np.ndarray, sample_rate: int, data_config) -> np.ndarray:
    """The model's audio window from a stored one: resampled to ``data.sample_rate``,
    then cut or tiled to ``audio_window_length`` samples (float32).

    A stored window longer than the model's (the released layout's whole test tracks) is
    cut at its exact centre, or with ``data.audio_centre: clip-middle`` as the release cut
    it (`hearflow.media.audio.middle_window`, up to 0.5 s earlier); a shorter one is tiled.
    """
    if sample_rate != data_config.sample_rate:
        audio = resample(audio, sample_rate, data_config.sample_rate)
    length = audio_window_length(data_config)
    if len(audio) == 0:
        return np.zeros(length, dtype=np.float32)
    if len(audio) < length:
        audio = np.tile(audio, -(-length // len(audio)))[:length]
    if len(audio) > length and data_config.audio_centre == "clip-middle":
        cut = middle_window(audio, data_config.sample_rate, data_config.seconds)
        if len(cut) == length:
            return cut
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
    if train:
        spec = torch_spectrogram(torch.from_numpy(window)[None], data_config)[0]
    else:
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


def torch_spectrogram(audio: torch.Tensor, data_config: DataConfig) -> torch.Tensor:
    """`spectrogram` of a batch of mono windows ``B x n`` (float32, any device): ``B x 1 x F x T``.

    ``torch.stft`` of the Tukey-windowed segments (no centring, no padding), with each
    segment's mean removed as scipy's ``detrend='constant'`` does (by linearity: the
    window's transform times the segment's mean is subtracted), density scaling and
    the one-sided doubling of scipy; then ``(log(S + log_eps) - spec_mean) / spec_std``.
    """
    nperseg, hop = data_config.nperseg, data_config.nperseg - data_config.noverlap
    if audio.ndim != 2 or audio.shape[1] < nperseg:
        raise HearflowError(f"the spectrogram needs B x n mono windows of at least {nperseg} samples, got "
                            f"{tuple(audio.shape)}")
    window, window_transform, scale = _stft_constants(nperseg, data_config.sample_rate, audio.device)
    transform = torch.stft(audio, nperseg, hop_length=hop, window=window, center=False, onesided=True,
                           return_complex=True)
    means = audio.unfold(-1, nperseg, hop).mean(dim=-1)
    transform = transform - means[:, None, :] * window_transform[None, :, None]
    power = (transform.real.square() + transform.imag.square()) * scale
    spec = (torch.log(power + data_config.log_eps) - data_config.spec_mean) / data_config.spec_std
    return spec[:, None]


@functools.lru_cache(maxsize=16)
def _stft_constants(nperseg: int, sample_rate: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """scipy's Tukey(0.25) window, its transform, and the density scaling per bin (the
    one-sided doubling of every bin but DC and, for even n, Nyquist included)."""
    window64 = scipy.signal.get_window(("tukey", 0.25), nperseg)
    window = torch.as_tensor(window64, dtype=torch.float32, device=device)
    scale = np.full(nperseg // 2 + 1, 2.0 / (sample_rate * np.square(window64).sum()))
    scale[0] /= 2
    if nperseg % 2 == 0:
        scale[-1] /= 2
    return window, torch.fft.rfft(window), torch.as_tensor(scale, dtype=torch.float32, device=device)[:, None]


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
    ``data_config.flow_encoding``. train: random crop and flip drawn from ``rng``
    (`train_crop`), a fresh generator when None; test: resize to S x S.
    """
    frame = np.asarray(frame)
    flow = np.asarray(flow, dtype=np.float32)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise HearflowError(f"a frame must be RGB uint8 H x W x 3, got {frame.dtype} {frame.shape}")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise HearflowError(f"a flow must be h x w x 2 (dx, dy), got {flow.shape}")
    size = data_config.image_size
    height, width = frame.shape[:2]
    signed = data_config.flow_encoding == "signed"
    if not train:
        image = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))
        planes = _resize_flow(flow, (size, size), None, signed)
        return _normalised(image.transpose(2, 0, 1)), torch.from_numpy(planes)
    crop = train_crop(width, height, data_config, rng if rng is not None else np.random.default_rng())
    image = _train_image(frame, crop)
    planes = _resize_flow(flow, crop.target, crop, signed)
    if crop.flip:
        image = image[:, :, ::-1]
        planes = planes[:, :, ::-1]
        if signed and data_config.flip_negates_flow:
            planes = planes * np.array([-1, 1], dtype=np.float32)[:, None, None]
    return _normalised(image), torch.from_numpy(np.ascontiguousarray(planes))


@dataclass(frozen=True)
class TrainCrop:
    """The random part of the training transform: resize to ``target`` (width, height), then
    the S x S crop at (``top``, ``left``) of the resized image, then a horizontal flip."""

    target: tuple[int, int]
    top: int
    left: int
    size: int
    flip: bool

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop as a region of a ``width`` x ``height`` original (Pillow's ``box``)."""
        scale_x, scale_y = width / self.target[0], height / self.target[1]
        return (self.left * scale_x, self.top * scale_y, (self.left + self.size) * scale_x,
                (self.top + self.size) * scale_y)


def train_crop(width: int, height: int, data_config: DataConfig, rng: np.random.Generator) -> TrainCrop:
    """The training crop and flip of a ``width`` x ``height`` frame, drawn from ``rng`` in this
    order: the crop's top, its left, the flip (p = 0.5)."""
    size = data_config.image_size
    target = _short_side_to(width, height, data_config.train_resize)
    top = int(rng.integers(0, target[1] - size + 1))
    left = int(rng.integers(0, target[0] - size + 1))
    return TrainCrop(target, top, left, size, bool(rng.random() < 0.5))


def _normalise_table() -> np.ndarray:
    """``3 x 256``: ``(v / 255 - mean) / std`` in float32 for every level v of each channel."""
    levels = np.arange(256, dtype=np.float32)[None, :]
    return (levels / 255 - IMAGENET_MEAN[:, None]) / IMAGENET_STD[:, None]


_NORMALISE = _normalise_table()


def _normalised(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 planes 3 x S x S (any strides) -> ImageNet-normalised float32 3 x S x S, by
    table (bit for bit ``(image / 255 - mean) / std``: each output is the same float32
    operations on its level)."""
    planes = np.empty(image.shape, dtype=np.float32)
    for channel in range(3):
        np.take(_NORMALISE[channel], image[channel], out=planes[channel])
    return torch.from_numpy(planes)


def _train_image(frame: np.ndarray, crop: TrainCrop) -> np.ndarray:
    """RGB uint8 H x W x 3 -> the crop's uint8 planes 3 x S x S (a view, not flipped).

    The whole frame is resized to ``crop.target`` as the released training did, with
    torch's antialiased bicubic on 8-bit levels (a fixed-point port of Pillow's filter,
    faster than Pillow's ``box`` resize of the crop alone: bench/loader.py; it rounds
    differently from Pillow on ~0.3 % of the pixels, by one grey level, rarely two), then
    cropped.
    """
    levels = torch.from_numpy(frame).permute(2, 0, 1)[None]
    resized = F.interpolate(levels, size=(crop.target[1], crop.target[0]), mode="bicubic", antialias=True)[0]
    return resized.numpy()[:, crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]


def _short_side_to(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side ``short`` and the long side scaled and truncated
    (torchvision's ``Resize(int)``, as the released training)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _resize_flow(flow: np.ndarray, target: tuple[int, int], crop: TrainCrop | None, signed: bool) -> np.ndarray:
    """Float32 ``2 x h x w`` planes of ``flow`` resized to ``target`` (width, height), or only
    the part of that resize that ``crop`` keeps.

    Signed flow: each component with antialiased bilinear, rescaled to pixels of the new
    size. Official flow: the released flow images, clipped to [0, 255] as 8-bit, bicubic,
    / 255.
    """
    height, width = flow.shape[:2]
    size = target if crop is None else (crop.size, crop.size)
    box = None if crop is None else crop.box(width, height)
    if signed:
        scale = (target[0] / width, target[1] / height)
        return np.stack([
            np.asarray(Image.fromarray(np.ascontiguousarray(flow[..., c])).resize(size, Image.BILINEAR, box=box))
            * scale[c]
            for c in range(2)
        ])
    levels = np.clip(np.rint(flow), 0, 255).astype(np.uint8)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(levels[..., c])).resize(size, Image.BICUBIC, box=box))
              for c in range(2)]
    return np.stack(planes).astype(np.float32) / 255
