"""The prepared layout: what `hearflow prepare` writes and every later stage reads.

hearflow's layout::

    OUT/manifest.csv     one row per finished sample (MANIFEST_COLUMNS)
    OUT/failures.csv     one row per input that could not be prepared (FAILURE_COLUMNS)
    OUT/prepare.json     the recipe (RECIPE_KEYS: sample rate, window and its centre, flow method, size, pairs)
    OUT/frames/{id}.jpg  the key frame at the working size, JPEG quality 95, optimised Huffman tables
    OUT/flow/{id}.png    the flow (dx, dy) at the frame's H x W, signed pixels, quantised to
                         1/32 pixel as a 16-bit PNG (`hearflow.data.codecs`: error <= 1/64 pixel)
    OUT/audio/{id}.wav   16-bit PCM mono, the audio window at the recipe's rate

Folders of earlier versions hold ``OUT/flow/{id}.npy`` (float16 H x W x 2) instead of
the PNG; they are read as they are (`sample_paths` finds whichever exists).

A run with ``--shard I/N`` writes ``manifest.shard-I-of-N.csv`` and
``failures.shard-I-of-N.csv`` instead, so shards can share one folder; the reader
takes the union of all manifests.

The released layout (read only): ``frames/{id}.jpg``, ``flow/flow_x/{id}.jpg``,
``flow/flow_y/{id}.jpg`` (8-bit, the flow clipped to [0, 255]) and ``audio/{id}.wav``.

Every file is written atomically (`hearflow.io.write_atomic`), and a
sample is finished only once its manifest row exists, which is appended last, so a
run killed at any moment leaves no sample that looks finished but is not.
"""

from __future__ import annotations

import io
import json
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hearflow.data.codecs import decode_flow, encode_flow, quantise_flow
from hearflow.data.integrity import file_problem
from hearflow.errors import HearflowError
from hearflow.io import csv_row, csv_text, read_csv, write_atomic

JPEG_QUALITY = 95
# The data-config fields that make a prepared folder (recorded in its prepare.json): a
# model fed a folder made otherwise sees other inputs than its recipe says.
RECIPE_KEYS = ("sample_rate", "seconds", "audio_centre", "flow_method", "flow_size", "flow_pairs")
# Recipe keys added after folders were first written -> what those folders did.
RECIPE_ADDED = {"audio_centre": "key-frame"}
# What the released layout's files are (its preprocessing scripts): whole-track audio
# (the window is cut when read, by data.audio_centre) and Farneback flow between the key
# frame and the next one, at the video's resolution, the audio at 22,050 Hz.
RELEASED_RECIPE = {"sample_rate": 22050, "flow_method": "farneback", "flow_size": 0, "flow_pairs": 1}


def recipe_of(data_config) -> dict:
    """The recipe (`RECIPE_KEYS`) a `hearflow.config.DataConfig` prepares with."""
    return {key: getattr(data_config, key) for key in RECIPE_KEYS}


def recipe_differences(recorded: dict, layout: str, data_config) -> list[str]:
    """``"KEY: A in the folder, B in the config"`` for each recipe key in which the folder's
    recorded recipe (its prepare.json, `RECIPE_ADDED` filling keys older folders lack; the
    released layout: `RELEASED_RECIPE`) differs from ``data_config``'s; keys the folder does
    not record are not compared."""
    known = RELEASED_RECIPE if layout == "released" else {**RECIPE_ADDED, **recorded} if recorded else {}
    wanted = recipe_of(data_config)
    return [f"{key}: {known[key]!r} in the folder, {wanted[key]!r} in the config"
            for key in RECIPE_KEYS if key in known and known[key] != wanted[key]]
MANIFEST_COLUMNS = (
    "id",
    "video",
    "key_frame",  # 0-based index of the key frame in presentation order
    "time_s",  # its presentation time, seconds from the start of the file
    "fps",
    "width",  # display size of the video
    "height",
    "duration_s",
    "n_frames",  # counted, not declared
    "rotation",  # counter-clockwise degrees applied for display
    "frame_width",  # size of the stored frame and flow
    "frame_height",
    "flow_method",
    "flow_pairs",
    "flow_mean_magnitude",  # mean |(dx, dy)| over the stored flow, pixels of the stored frame
    "sample_rate",
    "audio_seconds",
)
# stage: input (missing file, duplicate id), probe, audio, decode, flow, write, timeout, crash
FAILURE_COLUMNS = ("id", "video", "stage", "error")


@dataclass
class PreparedSample:
    """One sample: frame RGB uint8 H x W x 3, flow float32 H x W x 2, audio float32 (n,)."""

    id: str
    frame: np.ndarray
    flow: np.ndarray
    audio: np.ndarray
    sample_rate: int


def sample_paths(root: str | Path, sample_id: str) -> dict[str, Path]:
    """The files of one sample in hearflow's layout; the flow is ``{id}.png``, or an earlier
    version's ``{id}.npy`` when only that exists."""
    root = Path(root)
    flow = root / "flow" / f"{sample_id}.png"
    if not flow.is_file():
        legacy = flow.with_suffix(".npy")
        flow = legacy if legacy.is_file() else flow
    return {
        "frame": root / "frames" / f"{sample_id}.jpg",
        "flow": flow,
        "audio": root / "audio" / f"{sample_id}.wav",
    }


def released_paths(root: str | Path, sample_id: str) -> dict[str, Path]:
    """The files of one sample in the released layout."""
    root = Path(root)
    return {
        "frame": root / "frames" / f"{sample_id}.jpg",
        "flow_x": root / "flow" / "flow_x" / f"{sample_id}.jpg",
        "flow_y": root / "flow" / "flow_y" / f"{sample_id}.jpg",
        "audio": root / "audio" / f"{sample_id}.wav",
    }


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.csv" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.csv"


def failures_name(shard: tuple[int, int] | None) -> str:
    return "failures.csv" if shard is None else f"failures.shard-{shard[0]}-of-{shard[1]}.csv"


# ---------------------------------------------------------------- writing


def encode_jpeg(frame: np.ndarray) -> bytes:
    """RGB uint8 H x W x 3 -> JPEG bytes at JPEG_QUALITY.

    Huffman tables optimised for the image (libjpeg's ``optimize_coding``): about 6 %
    fewer bytes, the same coefficients, so every decoder gives the same pixels as
    without it (tests/test_codecs.py) and folders prepared before read the same.
    """
    options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise HearflowError("JPEG encoding failed")
    return data.tobytes()


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio in [-1, 1] -> 16-bit PCM WAV bytes (clipped, rounded)."""
    pcm = np.round(np.clip(np.asarray(audio, np.float64), -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()




def as_stored(frame: np.ndarray, flow: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, flow, audio) as `write_sample` stores them and `PreparedFolder.read` gives them
    back: the frame through JPEG at JPEG_QUALITY, the flow quantised as its PNG stores it
    (`hearflow.data.codecs.quantise_flow`), the audio through 16-bit PCM. What a model sees of a video at training and evaluation, so
    `hearflow localize` feeds it the same."""
    stored = cv2.imdecode(np.frombuffer(encode_jpeg(frame), np.uint8), cv2.IMREAD_COLOR)
    pcm = np.round(np.clip(np.asarray(audio, np.float64), -1.0, 1.0) * 32767).astype(np.int16)
    return (cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), quantise_flow(flow),
            pcm.astype(np.float32) / np.float32(-np.iinfo(np.int16).min))


def write_sample(root: str | Path, sample_id: str, frame: np.ndarray, flow: np.ndarray, audio: np.ndarray, sample_rate: int) -> None:
    """Write one sample's three files atomically (its manifest row is the caller's last step)."""
    if frame.shape[:2] != flow.shape[:2]:
        raise HearflowError(f"{sample_id}: frame {frame.shape[:2]} and flow {flow.shape[:2]} differ in size")
    paths = {**sample_paths(root, sample_id), "flow": Path(root) / "flow" / f"{sample_id}.png"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(paths["frame"], encode_jpeg(frame))
    write_atomic(paths["flow"], encode_flow(flow))
    write_atomic(paths["audio"], encode_wav(audio, sample_rate))


class CsvLog:
    """A CSV file that only ever gains whole rows: each row is one `os.write` in append mode.

    Opening it drops a torn last record (from a killed writer) and rows that `keep`
    rejects, rewriting the file atomically, and writes the header when it is new.
    Cells round-trip exactly (`hearflow.io.csv_row`: quoted, guarded against
    spreadsheet formulas); names that are not valid UTF-8 (bytes a file system allows)
    are kept as their bytes (``surrogateescape``), so an id always names its files.
    """

    def __init__(self, path: str | Path, columns: tuple[str, ...], keep=None) -> None:
        self.path = Path(path)
        self.columns = columns
        header, rows, clean = _read_csv(self.path, columns)
        kept = [row for row in rows if keep is None or keep(row)]
        self.rows = kept
        if not clean or len(kept) != len(rows) or header is None:
            self._rewrite()

    def append(self, row: dict) -> None:
        cells = [_cell(row.get(column, "")) for column in self.columns]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, _encode(csv_row(cells)))
        finally:
            os.close(fd)
        self.rows.append(dict(zip(self.columns, cells)))

    def remove(self, drop) -> None:
        """Rewrite the file without the rows for which `drop(row)` is true."""
        self.rows = [row for row in self.rows if not drop(row)]
        self._rewrite()

    def _rewrite(self) -> None:
        write_atomic(self.path, _encode(csv_text(self.columns, ([r[c] for c in self.columns] for r in self.rows))))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _read_csv(path: Path, columns: tuple[str, ...]) -> tuple[list[str] | None, list[dict], bool]:
    """(header, rows, clean): rows as dicts; clean is False when a torn last record was dropped."""
    if not path.exists():
        return None, [], False
    records, tail = read_csv(path.read_bytes().decode("utf-8", "surrogateescape"))
    if not records:
        return None, [], False
    header = records[0]
    if "id" not in header:
        raise HearflowError(f"{path} is not a hearflow manifest (its header is {header})")
    rows = [dict(zip(header, values)) for values in records[1:] if len(values) == len(header)]
    return header, rows, not tail


# ---------------------------------------------------------------- reading


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 in [-1, 1], sample rate) from a PCM or float WAV of any rate/channels.

    Strict: a file shorter than its header says (truncated) is a HearflowError, not
    the samples that are there."""
    import warnings

    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", wavfile.WavFileWarning)
            rate, data = wavfile.read(str(path))
    except (OSError, ValueError, wavfile.WavFileWarning) as error:
        raise HearflowError(f"{path}: not a readable WAV file ({error})") from None
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        audio = data.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio, int(rate)


def _read_image(path: Path, sample_id: str, flags: int) -> np.ndarray:
    """Decode a JPEG strictly: HearflowError naming the sample and file when it is missing or damaged."""
    problem = file_problem(path)
    if problem is not None:
        raise HearflowError(f"sample {sample_id!r}: {problem}")
    image = cv2.imdecode(np.fromfile(path, np.uint8), flags)
    if image is None:
        raise HearflowError(f"sample {sample_id!r}: {path} is not a readable image")
    return image


def read_flow(path: Path, sample_id: str) -> np.ndarray:
    """Float32 H x W x 2 flow from a flow PNG (`hearflow.data.codecs`) or an earlier version's ``.npy``."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False).astype(np.float32)
        return decode_flow(path.read_bytes())
    except (OSError, ValueError, EOFError, HearflowError) as error:
        raise HearflowError(f"sample {sample_id!r}: {path} is not a readable flow file ({error})") from None


class PreparedFolder:
    """A prepared folder in hearflow's layout or the released one (detected).

    ``ids`` lists the samples, sorted (not in manifest order, which follows the order
    in which `hearflow prepare`'s workers finished: the same folder prepared twice
    must train the same way); ``read(id)`` loads one; ``rows[id]`` is its
    manifest row (hearflow's layout only); ``recipe`` is ``prepare.json`` (or {}).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise HearflowError(f"{self.path}: no such folder")
        manifests = sorted(self.path.glob("manifest*.csv"))
        self.rows: dict[str, dict] = {}
        if manifests:
            self.layout = "hearflow"
            for manifest in manifests:
                _, rows, _ = _read_csv(manifest, MANIFEST_COLUMNS)
                for row in rows:
                    self.rows.setdefault(row["id"], row)
            self.ids = sorted(self.rows)
            recipe = self.path / "prepare.json"
            self.recipe = json.loads(recipe.read_text()) if recipe.is_file() else {}
        elif (self.path / "frames").is_dir() and (self.path / "flow" / "flow_x").is_dir():
            self.layout = "released"
            self.ids = sorted(p.stem for p in (self.path / "frames").glob("*.jpg"))
            self.recipe = {}
        else:
            raise HearflowError(
                f"{self.path} is not a prepared folder: it has neither manifest.csv (hearflow prepare) "
                "nor frames/ and flow/flow_x/ (the released layout)"
            )
        self._id_set = set(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, sample_id: str) -> dict[str, Path]:
        """The files `read(sample_id)` opens."""
        if self.layout == "hearflow":
            return sample_paths(self.path, sample_id)
        return released_paths(self.path, sample_id)

    def missing_files(self, sample_id: str) -> list[Path]:
        """Files of `sample_id` that do not exist (empty when the sample is complete)."""
        return [path for path in self.paths(sample_id).values() if not path.is_file()]

    def file_problems(self, sample_id: str) -> list[str]:
        """What is wrong with the files of `sample_id`, one line each: missing, empty or
        truncated (`file_problem`, a few bytes read per file); empty when they look whole."""
        return [problem for path in self.paths(sample_id).values() if (problem := file_problem(path)) is not None]

    def read(self, sample_id: str) -> PreparedSample:
        """Load one sample; HearflowError naming the id and the file when something is missing.

        Flow is float32 signed pixels (hearflow's layout) or the 0..255 values of the
        released JPEGs; audio is mono float32 at the WAV's own rate.
        """
        if sample_id not in self._id_set:
            raise HearflowError(f"sample {sample_id!r} is not in {self.path}")
        paths = self.paths(sample_id)
        frame = cv2.cvtColor(_read_image(paths["frame"], sample_id, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if self.layout == "hearflow":
            if not paths["flow"].is_file():
                raise HearflowError(f"sample {sample_id!r}: missing {paths['flow']}")
            flow = read_flow(paths["flow"], sample_id)
        else:
            flow_x = _read_image(paths["flow_x"], sample_id, cv2.IMREAD_GRAYSCALE)
            flow_y = _read_image(paths["flow_y"], sample_id, cv2.IMREAD_GRAYSCALE)
            if flow_x.shape != flow_y.shape:
                raise HearflowError(f"sample {sample_id!r}: {paths['flow_x']} and {paths['flow_y']} differ in size")
            flow = np.stack([flow_x, flow_y], axis=-1).astype(np.float32)
        if not paths["audio"].is_file():
            raise HearflowError(f"sample {sample_id!r}: missing {paths['audio']}")
        try:
            audio, sample_rate = read_wav(paths["audio"])
        except HearflowError as error:
            raise HearflowError(f"sample {sample_id!r}: {error}") from None
        return PreparedSample(sample_id, frame, flow, audio, sample_rate)


SYNTH_RECORD = "synth.json"  # what `hearflow synth` writes beside its videos/ folder


def training_data(folder: PreparedFolder) -> dict:
    """What a model trained on ``folder`` was trained on, as checkpoints record it.

    ``{"train": folder, "synthetic": bool}``: synthetic when every sample's video lies in
    the ``videos/`` folder of a `hearflow synth` output (which holds ``synth.json``);
    False means "not known to be synthetic" (the released layout records no videos).
    """
    folders = {Path(row["video"]).parent for row in folder.rows.values() if row.get("video")}
    synthetic = bool(folders) and all((videos.parent / SYNTH_RECORD).is_file() for videos in folders)
    return {"train": str(folder.path), "synthetic": synthetic}
