"""Training input pipeline: bytes per sample and samples/s per loader worker, against the loader before issue 18.

In one run, on the same prepared clips (bench/prepare.py's generated clips: 640 x 360,
panning texture, moving blobs, film grain, noisy stereo audio; prepared with the
``htf`` recipe at the default 455 x 256 working size):

- bytes per sample: the float16 ``.npy`` folder of before (frame JPEG, flow ``.npy``,
  WAV), the folder `hearflow prepare` writes now (flow as 16-bit PNG) and the shards of
  `hearflow pack` (JPEG, flow PNG, FLAC, JSON, tar headers);
- the flow's quantisation error against the float32 flow prepare computes (max and mean
  over every pixel), beside float16's, the storage of before;
- what each lossless size option costs (`encoding_costs`, CPU ms per sample, best of 3):
  the frame's JPEG without and with optimised Huffman tables (the folder's frames
  decoded and re-encoded both ways, pixels compared), the flow PNG at prepare's zlib
  level and as pack re-encodes it, FLAC at its default and its strongest level, and a
  whole `hearflow pack` of the folder;
- the loader's fast parts alone against what they replaced (`decode_and_resize_costs`):
  the flow PNG decoded by OpenCV and by `hearflow.data.codecs`, its image data inflated
  by zlib and by libdeflate, the training frame resized by Pillow's ``box`` and by
  torch's uint8 kernel, and the share of pixels that resize moves against Pillow's;
- CPU time per training sample of one loader worker (read, decode, transforms,
  collation into batches of 32), measured in this process with ``time.process_time``
  (a worker is one such process): the reference is the loader before issue 18, restated
  here (`reference_item`: whole-frame Pillow resizes then the crop, arithmetic
  normalisation, scipy's float64 spectrogram, the float16 ``.npy`` flow), on the
  ``.npy`` folder; hearflow's loader on the same ``.npy`` folder, on the PNG folder and
  streaming the shards; and what a worker does with ``train.gpu_inputs`` (reads bytes,
  inflates flow and audio) on the folder and on the shards. The variants alternate,
  order rotated each repeat; the best repeat of each counts.

    python3 bench/loader.py                          # 8 clips, 96 samples per timing, 3 repeats
    python3 bench/loader.py --clips 8 --repeats 5 --workdir /tmp/hearflow-loader

Goals (issue 18): <= 150 KB per sample at the default working size; >= 3x the
reference's samples/s per worker, folder and shards.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.signal
import torch
from PIL import Image
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare import make_clip  # noqa: E402  (bench/prepare.py)

from hearflow.config import preset_config  # noqa: E402
from hearflow.data.codecs import FLOW_STEP, decode_flow, encode_flac, encode_flow, recompress_flow  # noqa: E402
from hearflow.data.dataset import PreparedDataset  # noqa: E402
from hearflow.data.device_inputs import collate_encoded  # noqa: E402
from hearflow.data.prepared import JPEG_QUALITY, PreparedFolder, encode_jpeg, read_wav  # noqa: E402
from hearflow.data.shards import MEMBERS, PreparedShards  # noqa: E402
from hearflow.data.streaming import ShardStream  # noqa: E402
from hearflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, fit_audio  # noqa: E402
from hearflow.pack import pack  # noqa: E402
from hearflow.prepare import prepare  # noqa: E402

BATCH = 32


def make_data(root: Path, clips: int) -> tuple[Path, Path, Path]:
    """(PNG folder, .npy folder of before, shards) of ``clips`` generated clips (made once)."""
    videos, folder, legacy, shards = root / "videos", root / "prepared", root / "prepared-npy", root / "shards"
    if not (shards / "index.csv").exists():
        videos.mkdir(parents=True, exist_ok=True)
        for i in range(clips):
            if not (videos / f"clip{i:03d}.mp4").exists():
                make_clip(videos / f"clip{i:03d}.mp4", seed=100 + i, seconds=4)
        prepare(videos, folder, preset_config("htf").data, workers=2, progress=False)
        shutil.rmtree(legacy, ignore_errors=True)
        shutil.copytree(folder, legacy)
        for png in sorted((legacy / "flow").glob("*.png")):
            np.save(png.with_suffix(".npy"), decode_flow(png.read_bytes()).astype(np.float16))
            png.unlink()
        pack(folder, shards, progress=False)
    return folder, legacy, shards


def float_flows(videos: Path) -> list[np.ndarray]:
    """The float32 flow of each clip's key frame pair, as prepare computes it before storing it."""
    from hearflow.media.flow import aggregate_flow
    from hearflow.media.video import key_frame_index, probe, read_frames

    flows = []
    for video in sorted(videos.glob("*.mp4")):
        info = probe(video)
        key = key_frame_index(info.n_frames)
        _, flow = aggregate_flow(read_frames(video, key, 2, info), "farneback", 256, key=0)
        flows.append(flow.astype(np.float32))
    return flows


def report_sizes(folder: Path, legacy: Path, shards: Path, videos: Path) -> None:
    n = len(PreparedFolder(folder))

    def per_sample(paths) -> float:
        return sum(p.stat().st_size for p in paths) / n / 1000

    jpg, wav = per_sample((folder / "frames").glob("*.jpg")), per_sample((folder / "audio").glob("*.wav"))
    npy, png = per_sample((legacy / "flow").glob("*.npy")), per_sample((folder / "flow").glob("*.png"))
    tar = per_sample(shards.glob("*.tar"))
    packed = PreparedShards(shards)
    member = {extension: statistics.mean(len(packed.read_members(i)[extension]) for i in packed.ids) / 1000
              for extension in MEMBERS}
    print(f"bytes per sample ({n} samples, working size 455 x 256), KB:")
    print(f"  before (.npy folder): {jpg + npy + wav:7.1f} = jpg {jpg:.1f} + flow .npy {npy:.1f} + wav {wav:.1f}")
    print(f"  folder (PNG flow)   : {jpg + png + wav:7.1f} = jpg {jpg:.1f} + flow .png {png:.1f} + wav {wav:.1f}")
    print(f"  shards              : {tar:7.1f} = " + " + ".join(f"{e} {v:.1f}" for e, v in member.items())
          + f" + tar headers {tar - sum(member.values()):.1f}    ratio {(jpg + npy + wav) / tar:.2f}x smaller")
    errors_png, errors_f16 = [], []
    for flow in float_flows(videos):
        errors_png.append(np.abs(decode_flow(encode_flow(flow)).astype(np.float64) - flow).ravel())
        errors_f16.append(np.abs(flow.astype(np.float16).astype(np.float64) - flow).ravel())
    png_e, f16_e = np.concatenate(errors_png), np.concatenate(errors_f16)
    print(f"flow error vs float32, pixels: PNG at 1/{round(1 / FLOW_STEP)} px max {png_e.max():.5f} (bound "
          f"{FLOW_STEP / 2:.5f}) mean {png_e.mean():.5f}; float16 (before) max {f16_e.max():.5f} mean "
          f"{f16_e.mean():.5f}; largest |flow| {max(np.abs(f).max() for f in float_flows(videos)):.1f} px")


def _best_cpu_ms(work, items) -> tuple[float, list]:
    """(best of 3 CPU ms per item of ``work`` over ``items``, the outputs of the last run)."""
    best, outputs = float("inf"), []
    for _ in range(3):
        start = time.process_time()
        outputs = [work(item) for item in items]
        best = min(best, (time.process_time() - start) / len(items) * 1000)
    return best, outputs


def encoding_costs(folder: Path) -> None:
    """Bytes and CPU ms per sample of each lossless size option, and of a whole pack."""
    import soundfile
    from scipy.io import wavfile

    frames = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for p in sorted((folder / "frames").glob("*.jpg"))]
    flows = [p.read_bytes() for p in sorted((folder / "flow").glob("*.png"))]
    pcms = [wavfile.read(str(p)) for p in sorted((folder / "audio").glob("*.wav"))]

    def plain_jpeg(frame):
        return cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()

    def default_flac(rate_pcm):
        buffer = io.BytesIO()
        soundfile.write(buffer, rate_pcm[1], rate_pcm[0], format="FLAC", subtype="PCM_16")
        return buffer.getvalue()

    def decoded(data):
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    pairs = {
        "frame JPEG, plain / optimised Huffman": ((plain_jpeg, frames), (encode_jpeg, frames)),
        "flow PNG, prepare (zlib 6) / pack (zlib 9)": ((lambda d: encode_flow(decode_flow(d)), flows),
                                                       (recompress_flow, flows)),
        "audio FLAC, default / strongest level": ((default_flac, pcms), (lambda rp: encode_flac(rp[1], rp[0]), pcms)),
    }
    print("lossless size options (bytes and CPU ms per sample, best of 3):")
    for label, ((first, items), (second, _)) in pairs.items():
        (first_ms, first_out), (second_ms, second_out) = _best_cpu_ms(first, items), _best_cpu_ms(second, items)
        first_kb, second_kb = (sum(map(len, out)) / len(out) / 1000 for out in (first_out, second_out))
        same = ("" if not label.startswith("frame") else "  same pixels: "
                + str(all(np.array_equal(decoded(a), decoded(b)) for a, b in zip(first_out, second_out))))
        print(f"  {label:44s} {first_kb:6.1f} / {second_kb:6.1f} KB ({second_kb / first_kb:.3f}x)  "
              f"{first_ms:6.2f} / {second_ms:6.2f} ms{same}")
    out = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        start = time.process_time()
        pack(folder, out / "shards", progress=False)
        print(f"  hearflow pack: {(time.process_time() - start) / len(frames) * 1000:.1f} CPU ms per sample")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def decode_and_resize_costs(folder: Path, data) -> None:
    """CPU ms per sample of the loader's fast decode and resize against what they replaced
    (best of 3, each alone, on the folder's files), and how far the frame resize moves pixels."""
    import zlib

    import deflate

    from hearflow.data.codecs import _png_chunks, decode_flow_levels
    from hearflow.data.transforms import _train_image, train_crop

    flows = [p.read_bytes() for p in sorted((folder / "flow").glob("*.png"))]
    idats = [b"".join(body for kind, body, _ in _png_chunks(d) if kind == b"IDAT") for d in flows]
    frames = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for p in sorted((folder / "frames").glob("*.jpg"))]
    crops = [train_crop(f.shape[1], f.shape[0], data, np.random.default_rng(i)) for i, f in enumerate(frames)]
    size = len(zlib.decompress(idats[0]))

    def pillow_box(pair):
        frame, crop = pair
        box = crop.box(frame.shape[1], frame.shape[0])
        return np.asarray(Image.fromarray(frame).resize((crop.size, crop.size), Image.BICUBIC, box=box))

    def pillow_whole(pair):
        frame, crop = pair
        return np.asarray(Image.fromarray(frame).resize(crop.target, Image.BICUBIC))

    pairs = list(zip(frames, crops))
    flows, idats, timed_pairs = flows * 25, idats * 25, pairs * 25  # ~200 calls a timing
    rows = {
        "flow PNG to levels, OpenCV / hearflow": (
            (lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED), flows),
            (decode_flow_levels, flows)),
        "its image data inflated, zlib / libdeflate": (
            (zlib.decompress, idats), (lambda d: deflate.zlib_decompress(d, size), idats)),
        "training frame resize, Pillow box / torch": ((pillow_box, timed_pairs),
                                                      (lambda pair: _train_image(*pair), timed_pairs)),
    }
    print("decode and resize, alone (CPU ms per sample, best of 3):")
    for label, ((first, items), (second, _)) in rows.items():
        first_ms, second_ms = _best_cpu_ms(first, items)[0], _best_cpu_ms(second, items)[0]
        print(f"  {label:44s} {first_ms:6.2f} / {second_ms:6.2f} ms = {first_ms / second_ms:.2f}x faster")
    moved = [np.abs(_train_image(*pair).transpose(1, 2, 0).astype(int) - pillow_whole(pair)[
        pair[1].top : pair[1].top + pair[1].size, pair[1].left : pair[1].left + pair[1].size].astype(int))
        for pair in pairs]
    print(f"  torch's frame resize against Pillow's whole-frame resize: {np.mean([(m > 0).mean() for m in moved]):.2%}"
          f" of pixels differ, by at most {max(m.max() for m in moved)} grey levels")


def reference_item(folder: PreparedFolder, sample_id: str, data, rng: np.random.Generator) -> dict:
    """One training item as the loader before issue 18 made it (restated)."""
    paths = folder.paths(sample_id)
    frame = cv2.cvtColor(cv2.imread(str(paths["frame"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    flow = np.load(paths["flow"], allow_pickle=False).astype(np.float32)
    audio, rate = read_wav(paths["audio"])
    height, width = frame.shape[:2]
    size, short = data.image_size, data.train_resize
    target = (int(short * width / height), short) if width > height else (short, int(short * height / width))
    image = np.asarray(Image.fromarray(frame).resize(target, Image.BICUBIC))
    scale = (target[0] / flow.shape[1], target[1] / flow.shape[0])
    flow = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(flow[..., c])).resize(target, Image.BILINEAR))
                     * scale[c] for c in range(2)], axis=-1).astype(np.float32)
    top, left = int(rng.integers(0, target[1] - size + 1)), int(rng.integers(0, target[0] - size + 1))
    image, flow = image[top : top + size, left : left + size], flow[top : top + size, left : left + size]
    if rng.random() < 0.5:
        image, flow = image[:, ::-1], flow[:, ::-1] * np.array([-1, 1], dtype=np.float32)
    image = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    window = fit_audio(audio, rate, data).astype(np.float64)
    _, _, power = scipy.signal.spectrogram(window, data.sample_rate, nperseg=data.nperseg, noverlap=data.noverlap)
    spec = ((np.log(power + data.log_eps) - data.spec_mean) / data.spec_std).astype(np.float32)[None]
    return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "flow": torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))),
            "spectrogram": torch.from_numpy(spec), "id": sample_id}


def cpu_per_sample(items, collate, samples: int) -> float:
    """CPU seconds per sample of producing ``samples`` items from the iterator and collating them."""
    start, batch = time.process_time(), []
    for _ in range(samples):
        batch.append(next(items))
        if len(batch) == BATCH:
            collate(batch)
            batch = []
    return (time.process_time() - start) / samples


def cycle_map(dataset, reading) -> iter:
    epoch = 0
    while True:
        epoch += 1
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            yield reading(dataset, index, epoch)


def cycle_stream(shards: Path, config, encoded: bool) -> iter:
    packed = PreparedShards(shards)
    epoch = 0
    while True:
        epoch += 1
        stream = ShardStream(packed, config, packed.ids, 0, 1, 1, encoded=encoded)
        stream.set_epoch(epoch)
        yield from stream


def variants(folder: Path, legacy: Path, shards: Path, config) -> dict:
    old = PreparedFolder(legacy)
    data = config.data

    def reference(_, index, epoch):
        return reference_item(old, old.ids[index], data, np.random.default_rng([0, epoch, index]))

    def item(dataset, index, _):
        return dataset[index]

    return {
        "reference (before), .npy folder": lambda: (cycle_map(old.ids, reference), default_collate),
        "hearflow, .npy folder": lambda: (cycle_map(PreparedDataset(legacy, config, train=True), item), default_collate),
        "hearflow, PNG folder": lambda: (cycle_map(PreparedDataset(folder, config, train=True), item), default_collate),
        "hearflow, shards (streamed)": lambda: (cycle_stream(shards, config, False), default_collate),
        "gpu_inputs worker, PNG folder": lambda: (
            cycle_map(PreparedDataset(folder, config, train=True, encoded=True), item), collate_encoded),
        "gpu_inputs worker, shards": lambda: (cycle_stream(shards, config, True), collate_encoded),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="generated clips (distinct samples)")
    parser.add_argument("--samples", type=int, default=96, help="samples per timing (a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the clips, folders and shards here (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        folder, legacy, shards = make_data(root, args.clips)
        report_sizes(folder, legacy, shards, root / "videos")
        encoding_costs(folder)
        config = preset_config("htf")
        decode_and_resize_costs(folder, config.data)
        makers = variants(folder, legacy, shards, config)
        times: dict[str, list[float]] = {name: [] for name in makers}
        names = list(makers)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                items, collate = makers[name]()
                next(items)  # warm-up: imports, first file opens
                times[name].append(cpu_per_sample(items, collate, args.samples))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    reference = min(times[names[0]])
    print(f"CPU time per training sample of one loader worker (best of {args.repeats}, {args.samples} samples, "
          f"batches of {BATCH}, 1 thread):")
    for name in names:
        best = min(times[name])
        spread = ", ".join(f"{reference / t:.2f}" for t in times[name])
        print(f"  {name:34s} {best * 1000:6.2f} ms = {1 / best:6.1f} samples/s  ratio {reference / best:5.2f}x"
              f"  (repeats vs best reference: {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
