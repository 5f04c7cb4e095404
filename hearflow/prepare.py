"""`hearflow prepare`: a folder (or list) of videos -> a prepared folder (see `hearflow.data.prepared`).

Per video: probe (count frames), pick the key frame (the middle one, or the
``--keyframes`` entry), read the audio window centred on it, decode the key frame
and the next one(s) in one pass, compute the flow at the working size, and write
the frame, flow and audio atomically; the manifest row comes last. Any problem is
one row in failures.csv with its stage and reason, and the run goes on.

Work runs in worker processes (forkserver or spawn, one thread each), one video at a time
each; a video that takes longer than the time limit is recorded as a ``timeout``
failure and its worker is replaced. A rerun skips finished samples, redoes
half-finished ones, and does not retry recorded failures unless asked.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import re
import signal
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from hearflow.config import Config, DataConfig
from hearflow.data.prepared import (
    FAILURE_COLUMNS,
    MANIFEST_COLUMNS,
    TMP_MARKER,
    CsvLog,
    failures_name,
    manifest_name,
    sample_paths,
    write_atomic,
)
from hearflow.errors import HearflowError

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".3gp", ".ogv", ".wmv",
)  # fmt: skip
DEFAULT_TIMEOUT_S = 300.0  # per video; a decode that hangs longer is a "timeout" failure
WORKER_START_TIMEOUT_S = 120.0
RECIPE_KEYS = ("sample_rate", "seconds", "flow_method", "flow_size", "flow_pairs")


@dataclass
class PrepareSummary:
    """What a run did: counts, and where the details are."""

    prepared: int = 0  # finished in this run
    already_done: int = 0  # finished by an earlier run, skipped
    failed_before: int = 0  # recorded in failures.csv by an earlier run, skipped
    failed: int = 0  # recorded in failures.csv by this run
    inputs: int = 0  # videos this run is responsible for (after --ids and --shard)
    missing_ids: list[str] = field(default_factory=list)  # --ids entries with no video
    out: str = ""
    failures_file: str = ""

    @property
    def skipped(self) -> int:
        return self.already_done + self.failed_before

    @property
    def exit_status(self) -> int:
        """0 when every input is prepared or recorded as failed; 1 when no sample exists at all."""
        return 0 if self.prepared + self.already_done > 0 else 1

    def line(self) -> str:
        text = f"prepared {self.prepared}, skipped {self.skipped}"
        if self.skipped:
            text += f" ({self.already_done} finished earlier, {self.failed_before} failed earlier)"
        text += f", failed {self.failed} of {self.inputs} videos -> {self.out}"
        if self.failed or self.failed_before:
            text += f" (reasons in {self.failures_file})"
        return text


# ---------------------------------------------------------------- inputs


def find_videos(src: str | Path) -> list[Path]:
    """Videos under a folder (recursive, by suffix, sorted), or the paths listed in a text file.

    A list file has one path per line (blank lines and ``#`` comments ignored);
    relative paths are taken relative to the list file's folder.
    """
    src = Path(src)
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and not p.is_dir())
    if src.is_file():
        lines = src.read_text(encoding="utf-8", errors="replace").splitlines()
        paths = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        return [p if p.is_absolute() else src.parent / p for p in map(Path, paths)]
    raise HearflowError(f"{src}: no such folder or list file")


_HEADER_WORDS = {"id", "ids", "video", "file", "flickr_id", "youtube_id", "ytid", "# ytid"}


def read_ids(path: str | Path) -> list[str]:
    """Sample ids from a text/CSV file: the first field of each line.

    VGG-Sound ids are ``{youtube_id}_{start:06d}``; a VGG-Sound metadata row
    ``youtube_id,start,label,split`` becomes that id; Flickr ids are numbers. A
    header line (``id``, ``video``, ``flickr_id``, ...) is skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise HearflowError(f"cannot read --ids file {path}: {error}") from None
    ids = []
    for number, line in enumerate(lines):
        fields = [f.strip().strip('"') for f in line.split(",")]
        if not fields[0] or (number == 0 and fields[0].lower() in _HEADER_WORDS):
            continue
        first = fields[0]
        if (
            len(fields) >= 3
            and re.fullmatch(r"\d+", fields[1])
            and not first.isdigit()
            and not re.search(r"_\d{6}$", first)
        ):
            first = f"{first}_{int(fields[1]):06d}"
        ids.append(first)
    if not ids:
        raise HearflowError(f"--ids file {path} holds no ids")
    return ids


def read_keyframes(path: str | Path) -> dict[str, int]:
    """``id -> 1-based frame index`` from a Flickr key-frame CSV (``flickr_id,frame_indices``).

    The indices column holds space-separated candidates; the first one is used (as
    the authors did).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise HearflowError(f"cannot read --keyframes file {path}: {error}") from None
    keyframes = {}
    for number, line in enumerate(lines, 1):
        sample_id, _, indices = line.partition(",")
        candidates = indices.replace('"', " ").split()
        if not candidates or not candidates[0].isdigit():
            if number == 1:
                continue  # header
            raise HearflowError(f"{path}:{number}: expected 'id,index [index ...]', got {line!r}")
        keyframes[sample_id.strip()] = int(candidates[0])
    return keyframes


def key_frame_from_one_based(index: int, n_frames: int) -> int:
    """The authors' rule for a 1-based Flickr index: subtract 1, or 2 when it is the last frame.

    (An index past the end, from a frame count that differs from theirs, is treated
    like the last frame.)
    """
    return max(0, n_frames - 2 if index >= n_frames else index - 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise HearflowError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def shard_of(sample_id: str, count: int) -> int:
    """The shard (0..count-1) of an id: a stable hash, the same on every machine."""
    return zlib.crc32(sample_id.encode("utf-8")) % count


# ---------------------------------------------------------------- one video


class StageFailure(Exception):
    """A video that could not be prepared: the stage and the reason."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


class _Stage:
    """``with _Stage("decode"):`` turns any exception into a StageFailure of that stage."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, StageFailure) or not isinstance(error, Exception):
            return False
        message = str(error) if isinstance(error, HearflowError) else f"{type(error).__name__}: {error}"
        raise StageFailure(self.name, message) from error


def prepare_video(video: str | Path, sample_id: str, out: str | Path, recipe: dict, one_based_key: int | None = None) -> dict:
    """Prepare one video into `out`; returns its manifest row or raises StageFailure."""
    from hearflow.data.prepared import write_sample
    from hearflow.media.audio import read_audio_window
    from hearflow.media.flow import aggregate_flow, pair_window
    from hearflow.media.video import VideoFile, key_frame_index

    import numpy as np

    with _Stage("probe"):
        clip = VideoFile(video)  # the one pass over the file
    with clip:
        info = clip.info
        with _Stage("probe"):
            if info.n_frames < 2:
                raise HearflowError(f"{video}: {info.n_frames} frame(s); a sample needs at least 2")
        with _Stage("audio"):
            if not info.has_audio:
                raise HearflowError(f"{video}: no audio stream")
            key = key_frame_index(info.n_frames) if one_based_key is None else key_frame_from_one_based(one_based_key, info.n_frames)
            time_s = info.frame_time(key)
            audio = read_audio_window(clip, time_s, recipe["seconds"], recipe["sample_rate"])
        with _Stage("decode"):
            pairs = min(recipe["flow_pairs"], info.n_frames - 1)
            first = pair_window(key, pairs, info.n_frames)
            frames = clip.read_frames(first, pairs + 1)
    with _Stage("flow"):
        frame, flow = aggregate_flow(frames, recipe["flow_method"], recipe["flow_size"] or None, key=key - first)
    with _Stage("write"):
        write_sample(out, sample_id, frame, flow, audio, recipe["sample_rate"])
    return {
        "id": sample_id,
        "video": str(video),
        "key_frame": key,
        "time_s": round(time_s, 6),
        "fps": round(info.fps, 6),
        "width": info.width,
        "height": info.height,
        "duration_s": round(info.duration_s, 6),
        "n_frames": info.n_frames,
        "rotation": info.rotation,
        "frame_width": frame.shape[1],
        "frame_height": frame.shape[0],
        "flow_method": recipe["flow_method"],
        "flow_pairs": pairs,
        "flow_mean_magnitude": float(np.hypot(flow[..., 0], flow[..., 1]).mean(dtype=np.float64)),
        "sample_rate": recipe["sample_rate"],
        "audio_seconds": recipe["seconds"],
    }


# ---------------------------------------------------------------- workers


def _worker_main(connection, out: str, recipe: dict) -> None:
    """A worker process: one thread, one video at a time, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import cv2

    cv2.setNumThreads(1)
    gc.freeze()  # the imported modules' objects: the per-video collections need not walk them again
    connection.send(("ready",))
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        number, video, sample_id, one_based_key = task
        try:
            row = prepare_video(video, sample_id, out, recipe, one_based_key)
            message = ("ok", number, row)
        except StageFailure as failure:
            message = ("failed", number, failure.stage, failure.message)
        except Exception as error:  # a bug outside the stages: record it, keep the worker
            message = ("failed", number, "crash", f"{type(error).__name__}: {error}")
        try:
            connection.send(message)
        except (BrokenPipeError, OSError):
            return


def _worker_context():
    """Forkserver where the platform has it (workers start in milliseconds from a server
    that has imported the media stack once, and inherit no threads), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["hearflow.media.video", "hearflow.media.audio", "hearflow.media.flow",
                                        "hearflow.data.prepared"])
        return context
    return multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    process: multiprocessing.Process
    connection: object
    task: tuple | None = None
    deadline: float = 0.0


class WorkerPool:
    """N worker processes with a per-task time limit; a stuck or dead worker is replaced."""

    def __init__(self, workers: int, out: str, recipe: dict, timeout_s: float) -> None:
        self.size = workers
        self.out, self.recipe, self.timeout_s = out, recipe, timeout_s
        self.context = _worker_context()
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child, self.out, self.recipe), daemon=True)
        process.start()
        child.close()
        if not parent.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise HearflowError(f"a prepare worker did not start within {WORKER_START_TIMEOUT_S:g} s")
        try:
            parent.recv()
        except EOFError:
            process.join(5)
            raise HearflowError(
                f"a prepare worker failed to start (exit code {process.exitcode}; its error is printed above; "
                "worker processes re-import the main script, so run prepare from a file or `python -c`, not stdin)"
            ) from None
        worker = _Worker(process, parent)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self.workers.remove(worker)

    def run(self, tasks):
        """Yield ``(task, message)`` for every task: ("ok", n, row) or ("failed", n, stage, error)."""
        pending = deque(tasks)
        try:
            while pending or any(w.task for w in self.workers):
                while pending and (len(self.workers) < self.size or any(w.task is None for w in self.workers)):
                    worker = next((w for w in self.workers if w.task is None), None) or self._start()
                    worker.task = pending.popleft()
                    worker.deadline = time.monotonic() + self.timeout_s
                    worker.connection.send(worker.task)
                busy = [w for w in self.workers if w.task is not None]
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = set(wait([w.connection for w in busy], timeout=timeout))
                for worker in busy:
                    task = worker.task
                    if worker.connection in ready:
                        try:
                            message = worker.connection.recv()
                        except (EOFError, OSError):
                            worker.process.join(5)
                            code = worker.process.exitcode
                            self._retire(worker)
                            yield task, ("failed", task[0], "crash", f"the worker process died (exit code {code})")
                            continue
                        worker.task = None
                        yield task, message
                    elif time.monotonic() > worker.deadline:
                        self._retire(worker)
                        yield task, ("failed", task[0], "timeout", f"not done after {self.timeout_s:g} s; worker stopped")
        finally:
            self.close()

    def close(self) -> None:
        for worker in list(self.workers):
            try:
                worker.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in list(self.workers):
            worker.process.join(5 if worker.task is None else 0)
            self._retire(worker)


# ---------------------------------------------------------------- the stage


def _check_recipe(out: Path, recipe: dict) -> None:
    """Write prepare.json, or check that an existing one holds the same recipe."""
    path = out / "prepare.json"
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise HearflowError(f"{path} is unreadable ({error}); remove it or use a new output folder") from None
        differences = [f"{key} {earlier.get(key)!r} -> {recipe[key]!r}" for key in RECIPE_KEYS if earlier.get(key) != recipe[key]]
        if differences:
            raise HearflowError(
                f"{out} was prepared with another recipe ({'; '.join(differences)}); "
                "use a new output folder or the same options"
            )
        return
    from hearflow import __version__

    write_atomic(path, (json.dumps({**recipe, "hearflow_version": __version__}, indent=2) + "\n").encode())


def _remove_stale_temporaries(out: Path, sample_ids: set[str], shard) -> None:
    """Delete ``*.tmp-<pid>`` leftovers of killed runs that belong to this run's samples."""
    for folder in ("frames", "flow", "audio"):
        for path in (out / folder).glob(f"*{TMP_MARKER}*"):
            stem = path.name.split(TMP_MARKER)[0].rsplit(".", 1)[0]
            if stem in sample_ids:
                path.unlink(missing_ok=True)
    for name in (manifest_name(shard), failures_name(shard), "prepare.json"):
        for path in out.glob(f"{name}{TMP_MARKER}*"):
            path.unlink(missing_ok=True)


def prepare(
    src: str | Path,
    out: str | Path,
    data_config: DataConfig | None = None,
    *,
    ids: str | Path | None = None,
    keyframes: str | Path | None = None,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retry_failed: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare every video of `src` (a folder, searched recursively, or a list file) into `out`.

    The recipe (audio rate and window, flow method, working size, pairs) comes from
    `data_config` (default: the ``htf`` preset's). `ids`: a file of ids to select;
    `keyframes`: a Flickr key-frame CSV; `shard`: (I, N) to do only the ids whose
    stable hash falls in shard I. Returns a PrepareSummary; usage errors raise
    HearflowError.
    """
    from tqdm import tqdm

    config = data_config or DataConfig()
    Config(data=config).validate()
    if workers < 1:
        raise HearflowError(f"--workers must be at least 1, got {workers}")
    if timeout_s <= 0:
        raise HearflowError(f"--timeout must be positive, got {timeout_s}")
    if config.sample_rate <= 0 or config.seconds <= 0:
        raise HearflowError("--sample-rate and --seconds must be positive")
    recipe = {key: getattr(config, key) for key in RECIPE_KEYS}
    out = Path(out)
    videos = find_videos(src)
    if not videos:
        raise HearflowError(f"no videos found in {src} (looked for {', '.join(VIDEO_SUFFIXES)})")
    summary = PrepareSummary(out=str(out), failures_file=str(out / failures_name(shard)))

    wanted = read_ids(ids) if ids is not None else None
    if wanted is not None:
        stems = {video.stem for video in videos}
        summary.missing_ids = [sample_id for sample_id in dict.fromkeys(wanted) if sample_id not in stems]
        wanted_set = set(wanted)
        videos = [video for video in videos if video.stem in wanted_set]
    if shard is not None:
        videos = [video for video in videos if shard_of(video.stem, shard[1]) == shard[0]]
    key_frames = read_keyframes(keyframes) if keyframes is not None else {}

    tasks, input_failures, owner = [], [], {}
    for video in videos:
        sample_id = video.stem
        if sample_id in owner:
            input_failures.append((video, sample_id, f"duplicate id {sample_id!r}: {owner[sample_id]} is used"))
        elif not video.exists():
            input_failures.append((video, sample_id, f"{video}: no such file"))
        else:
            owner[sample_id] = video
            tasks.append((len(tasks), str(video), sample_id, key_frames.get(sample_id)))
    summary.inputs = len(videos)

    for folder in ("frames", "flow", "audio"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    _check_recipe(out, recipe)
    _remove_stale_temporaries(out, set(owner), shard)
    manifest = CsvLog(
        out / manifest_name(shard),
        MANIFEST_COLUMNS,
        keep=lambda row: all(p.is_file() for p in sample_paths(out, row["id"]).values()),
    )
    failures = CsvLog(out / failures_name(shard), FAILURE_COLUMNS)
    inputs = {str(video) for video in videos}
    if retry_failed:
        failures.remove(lambda row: row["video"] in inputs)
    failed_before = {row["video"] for row in failures.rows}
    finished = {row["id"] for row in manifest.rows}

    for video, sample_id, error in input_failures:
        if str(video) in failed_before:
            summary.failed_before += 1
        else:
            failures.append({"id": sample_id, "video": str(video), "stage": "input", "error": error})
            summary.failed += 1
    todo = []
    for task in tasks:
        if task[2] in finished:
            summary.already_done += 1
        elif task[1] in failed_before:
            summary.failed_before += 1
        else:
            todo.append(task)

    if todo:
        pool = WorkerPool(min(workers, len(todo)), str(out), recipe, timeout_s)
        bar = tqdm(total=len(todo), unit="video", desc="prepare", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        try:
            for task, message in pool.run(todo):
                if message[0] == "ok":
                    manifest.append(message[2])
                    summary.prepared += 1
                else:
                    failures.append({"id": task[2], "video": task[1], "stage": message[2], "error": message[3]})
                    summary.failed += 1
                bar.update(1)
                bar.set_postfix(failed=summary.failed, refresh=False)
        finally:
            bar.close()
    if summary.missing_ids:
        write_atomic(out / "missing_ids.txt", ("\n".join(summary.missing_ids) + "\n").encode())
    return summary
