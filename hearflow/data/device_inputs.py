"""The GPU input path of training (``train.gpu_inputs``): loader workers read bytes, the device does the rest.

A loader worker reads a sample's stored files and only undoes their lossless
encodings: the frame stays JPEG bytes, the flow PNG is inflated to its int16 levels
(`hearflow.data.codecs.decode_flow_levels`), the audio is decoded to float and fitted
to the model's window; the worker also draws the sample's crop and flip
(`hearflow.data.transforms.train_crop`, from the generator the CPU path uses). The
training process then makes the batch's inputs on its device (`device_inputs`):
JPEG decoding (``torchvision.io.decode_jpeg``, nvJPEG on CUDA), the resizes
(antialiased bicubic for the frame, rounded to 8-bit levels as Pillow's are;
antialiased bilinear for the flow), the crop, the flip, the normalisation and the
spectrogram (`torch_spectrogram`).

Numerically this is the CPU training transform made by other code: torch's
antialiased filters are Pillow's, evaluated in float instead of the fixed point of the
CPU path's uint8 kernel (each pass rounded and clipped to 8 bits as it does), so on the
CPU images differ from the CPU path's by a grey level (two where both passes round the
other way) on under 1 % of the pixels and flows by float rounding
(tests/test_device_inputs.py); nvJPEG's IDCT may differ from libjpeg's by a
level here and there on top (not measurable without a GPU). Evaluation always uses the
CPU test transform.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hearflow.config import DataConfig
from hearflow.data.codecs import decode_flac, decode_flow_levels
from hearflow.data.prepared import read_wav
from hearflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, fit_audio, torch_spectrogram, train_crop
from hearflow.errors import HearflowError


@dataclass
class EncodedSample:
    """One sample as stored: JPEG bytes; flow ``levels`` 2 x h x w (int16 levels, or an earlier
    version's float16 pixels) with ``flow = levels * flow_step``; mono float32 audio."""

    id: str
    jpeg: bytes
    flow_levels: np.ndarray
    flow_step: float
    audio: np.ndarray
    sample_rate: int


def read_encoded(source, sample_id: str) -> EncodedSample:
    """The `EncodedSample` of ``sample_id`` in a prepared folder (hearflow's layout) or shards."""
    if source.layout == "shards":
        return encoded_from_members(source.read_members(sample_id), sample_id)
    if source.layout != "hearflow":
        raise HearflowError(f"{source.path} is in the released layout; train.gpu_inputs reads folders made by "
                            "`hearflow prepare` and shards made by `hearflow pack`")
    paths = source.paths(sample_id)
    try:
        jpeg = paths["frame"].read_bytes()
        if paths["flow"].suffix == ".npy":
            levels, step = np.load(paths["flow"], allow_pickle=False).transpose(2, 0, 1), 1.0
        else:
            levels, step = decode_flow_levels(paths["flow"].read_bytes())
    except (OSError, ValueError, HearflowError) as error:
        raise HearflowError(f"sample {sample_id!r}: {error}") from None
    audio, rate = read_wav(paths["audio"])
    return EncodedSample(sample_id, jpeg, levels, step, audio, rate)


def encoded_from_members(members: dict[str, bytes], sample_id: str) -> EncodedSample:
    """`EncodedSample` from a shard sample's members (`hearflow.data.shards.MEMBERS`)."""
    try:
        levels, step = decode_flow_levels(members["flow.png"])
        audio, rate = decode_flac(members["flac"])
    except HearflowError as error:
        raise HearflowError(f"sample {sample_id!r}: {error}") from None
    return EncodedSample(sample_id, members["jpg"], levels, step, audio, rate)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of JPEG bytes, from the header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise HearflowError(f"not a readable JPEG ({error})") from None


def encoded_item(sample: EncodedSample, data_config: DataConfig, rng: np.random.Generator) -> dict:
    """A loader item of the GPU path: the bytes and levels, the fitted audio window, the crop.

    ``crop`` is int64 ``[top, left, target width, target height, flip]``.
    """
    width, height = jpeg_size(sample.jpeg)
    crop = train_crop(width, height, data_config, rng)
    window = fit_audio(sample.audio, sample.sample_rate, data_config)
    return {
        "jpeg": torch.frombuffer(bytearray(sample.jpeg), dtype=torch.uint8),
        "flow_levels": torch.from_numpy(np.ascontiguousarray(sample.flow_levels)),
        "flow_step": torch.tensor(sample.flow_step, dtype=torch.float32),
        "audio": torch.from_numpy(window),
        "crop": torch.tensor([crop.top, crop.left, crop.target[0], crop.target[1], int(crop.flip)]),
        "id": sample.id,
    }


def collate_encoded(items: list[dict]) -> dict:
    """A batch of `encoded_item` s: lists for the variable-size ``jpeg`` and ``flow_levels``."""
    return {
        "jpeg": [item["jpeg"] for item in items],
        "flow_levels": [item["flow_levels"] for item in items],
        "flow_step": torch.stack([item["flow_step"] for item in items]),
        "audio": torch.stack([item["audio"] for item in items]),
        "crop": torch.stack([item["crop"] for item in items]),
        "id": [item["id"] for item in items],
    }


def device_inputs(batch: dict, data_config: DataConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The model's inputs of a `collate_encoded` batch, made on ``device``:
    (image B x 3 x S x S, flow B x 2 x S x S, spectrogram B x 1 x F x T), float32."""
    from torchvision.io import ImageReadMode, decode_jpeg

    crops = batch["crop"].tolist()
    frames = decode_jpeg(batch["jpeg"], mode=ImageReadMode.RGB, device=device)
    images, flows = [], []
    for frame, levels, step, crop in zip(frames, batch["flow_levels"], batch["flow_step"].tolist(), crops):
        image, flow = _crop_and_flip(frame, levels.to(device, non_blocking=True), step, crop, data_config)
        images.append(image)
        flows.append(flow)
    mean = torch.as_tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=device)[:, None, None]
    image = (torch.stack(images) / 255 - mean) / std
    spectrogram = torch_spectrogram(batch["audio"].to(device, non_blocking=True), data_config)
    return image, torch.stack(flows), spectrogram


def _crop_and_flip(frame: torch.Tensor, levels: torch.Tensor, step: float, crop: list[int],
                   data_config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: frame uint8 3 x H x W and flow levels 2 x h x w (on the device) -> the
    training crop, float32 3 x S x S (0..255 levels) and 2 x S x S."""
    top, left, width, height, flip = crop
    size = data_config.image_size
    window = (slice(None), slice(top, top + size), slice(left, left + size))
    image = _resize_levels(frame.float(), width, height)[window]
    flow = levels.float() * step
    if data_config.flow_encoding == "signed":
        scale = torch.tensor([width / flow.shape[2], height / flow.shape[1]], device=flow.device)[:, None, None]
        flow = F.interpolate(flow[None], size=(height, width), mode="bilinear", antialias=True,
                             align_corners=False)[0] * scale
    else:  # the released 8-bit flow images, resized like images, / 255
        flow = _resize_levels(flow.round().clamp(0, 255), width, height) / 255
    flow = flow[window]
    if flip:
        image, flow = image.flip(-1), flow.flip(-1)
        if data_config.flow_encoding == "signed" and data_config.flip_negates_flow:
            flow = flow * torch.tensor([-1.0, 1.0], device=flow.device)[:, None, None]
    return image, flow


def _resize_levels(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Antialiased bicubic resize of 8-bit levels (float C x H x W) as Pillow does it: the
    horizontal pass, rounded and clipped to 0..255, then the vertical pass, rounded and clipped
    (clipping between the passes matters at sharp edges, where bicubic overshoots)."""
    passes = ((image.shape[1], width), (height, width))
    for size in passes:
        image = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        image = image.round().clamp(0, 255)
    return image
