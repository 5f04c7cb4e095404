"""Test videos written directly with PyAV, including the odd ones real datasets hold.

Every frame carries its own index as a visible binary code (a band of black and
white cells across the top quarter), so a test can tell which frame it got even
after resizing, JPEG compression or rotation. The rest of the frame is a smooth
pattern that drifts a little each frame, so encoders produce ordinary P/B frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_BITS = 12  # frame indices up to 4095

_CONTAINER_CODECS = {  # suffix -> (video codec, audio codec)
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mpeg4", "libmp3lame"),
}


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 height x width x 3: the index code on top of a drifting pattern."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = 0.15 * index
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = 100 + 60 * np.sin(x / 9.0 + phase)
    frame[..., 1] = 100 + 60 * np.cos(y / 7.0 - phase)
    frame[..., 2] = 100 + 50 * np.sin((x + y) / 13.0 + 2 * phase)
    band = max(4, height // 4)
    for bit in range(CODE_BITS):
        x0, x1 = bit * width // CODE_BITS, (bit + 1) * width // CODE_BITS
        frame[:band, x0:x1] = 255 if (index >> bit) & 1 else 0
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index coded in `frame` (RGB, the orientation it was written in)."""
    height, width = frame.shape[:2]
    band = max(4, height // 4)
    gray = frame[: band * 3 // 4, :, :].mean(axis=2)
    index = 0
    for bit in range(CODE_BITS):
        x0, x1 = bit * width // CODE_BITS, (bit + 1) * width // CODE_BITS
        cell = gray[band // 4 :, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4]
        if cell.mean() > 128:
            index |= 1 << bit
    return index


def click_track(seconds: float, sample_rate: int, click_s: float, channels: int = 1) -> np.ndarray:
    """Float32 channels x n: quiet noise with one loud short click starting at `click_s`."""
    rng = np.random.default_rng(0)
    n = int(round(seconds * sample_rate))
    audio = (0.01 * rng.standard_normal((channels, n))).astype(np.float32)
    start = int(round(click_s * sample_rate))
    audio[:, start : start + max(1, sample_rate // 2000)] = 0.9
    return audio


def tone_track(seconds: float, sample_rate: int, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    """Float32 channels x n: a sine tone, each channel at a slightly different level."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * frequency * t)
    return np.stack([tone * (1 - 0.1 * c) for c in range(channels)]).astype(np.float32)


_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def write_video(
    path: str | Path,
    n_frames: int = 30,
    fps: float = 30,
    size: tuple[int, int] = (160, 120),
    *,
    frames: list[np.ndarray] | None = None,
    frame_times: list[float] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a test video; the container follows the suffix.

    `frames` defaults to `index_frame(i, *size)`; `frame_times` (seconds) makes the
    video variable-frame-rate; `audio` is channels x n float32 (or None for no audio
    stream); `rotation` is written as display-matrix side data (counter-clockwise
    degrees, as PyAV reads it back); `gop` is the keyframe interval.
    """
    path = Path(path)
    default_video, default_audio = _CONTAINER_CODECS[path.suffix.lower()]
    width, height = size
    if frames is None:
        frames = [index_frame(i, width, height) for i in range(n_frames)]
    container = av.open(str(path), "w")
    try:
        stream = container.add_stream(video_codec or default_video, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.codec_context.options = dict(options)
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(audio_codec or default_audio, rate=sample_rate)
            audio_stream.layout = _LAYOUTS[audio.shape[0]]
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if frame_times is not None:
                video_frame.pts = int(round(frame_times[i] * 1000))
                video_frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)
    finally:
        container.close()
    return path


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    channels, n = audio.shape
    chunk = 4096
    for start in range(0, n, chunk):
        part = np.ascontiguousarray(audio[:, start : start + chunk], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=_LAYOUTS[channels])
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """An audio-only file (e.g. .m4a with AAC or .mkv)."""
    path = Path(path)
    container = av.open(str(path), "w", format="mp4" if path.suffix in (".m4a", ".mp4") else None)
    try:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = _LAYOUTS[audio.shape[0]]
        _encode_audio(container, stream, audio, sample_rate)
    finally:
        container.close()
    return path


def sequential_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of the first video stream, decoded from the start, RGB, coded orientation."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def flat_grey_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG of ``width x height`` mid-grey pixels, made without holding the image:
    in a 4:2:0 JPEG of grey 128 every 16 x 16 block codes to the same 4 bytes (DC 0, EOB), so
    a 16000 x 16000 frame takes 4 MB on disk and 384 MB once decoded."""
    import struct

    import cv2

    _, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data, position = bytearray(encoded.tobytes()), 2
    while True:  # walk the markers to the frame header (sizes) and the scan
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == 0xC0:
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
        if marker == 0xDA:
            header = bytes(data[: position + 2 + length])
            break
        position += 2 + length
    blocks = -(-width // 16) * -(-height // 16)
    return header + b"\x28\xa2\x8a\x00" * blocks + b"\xff\xd9"


def write_mjpeg(path: str | Path, frames: list[bytes], declared: tuple[int, int]) -> Path:
    """An MJPEG AVI of the given JPEG frames (muxed, not encoded), declaring ``declared`` (w, h)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = declared[0], declared[1], "yuvj420p"
        for index, frame in enumerate(frames):
            packet = av.Packet(frame)
            packet.stream, packet.pts, packet.dts = stream, index, index
            container.mux(packet)
    return Path(path)
