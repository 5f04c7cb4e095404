"""`hearflow prepare`: a folder (or list) of videos -> a prepared folder (see `hearflow.data.prepared`).

Per video: probe (count frames), pick the key frame (the middle one, or the
``--keyframes`` entry), read the audio window centred on it, decode the key frame
and the next one(s) in one pass, compute the flow at the working size, and write
the frame, flow and audio atomically; the manifest row comes last. Any problem is
one row in failures.csv with its stage and reason, and the run goes on. A rerun drops
the manifest rows of samples whose files are missing or damaged (`file_problem`) and
prepares them again.

Work runs in worker processes (forkserver or spawn, one thread each), one video at a time
each; a video that takes longer than the time limit is recorded as a ``timeout``
failure and its worker is replaced. A rerun skips finished samples, redoes
half-finished ones, and does not retry recorded failures unless asked.

A run holds a lock on OUT (`hearflow.io.folder_lock`): ``prepare.lock``, exclusive,
or shared by ``--shard`` runs, each of which also holds ``prepare.shard-I-of-N.lock``
(shards do disjoint ids and write their own manifests). A full disk, a read-only
OUT or one the user may not write stops the run with one line (`OutputStorageError`):
that is not a property of any video, so nothing is recorded as failed and the same
command finishes the job once there is room.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hearflow.config import Config, DataConfig
from hearflow.data.lists import VIDEO_SUFFIXES, find_videos, read_ids, read_keyframe_files, shard_of
from hearflow.data.prepared import (
    FAILURE_COLUMNS,
    MANIFEST_COLUMNS,
    RECIPE_ADDED,
    RECIPE_KEYS,
    CsvLog,
    failures_name,
    manifest_name,
    recipe_of,
    sample_paths,
)
from hearflow.data.integrity import file_problem
from hearflow.errors import HearflowError, option
from hearflow.io import folder_lock, remove_stale_temporaries, storage_problem, write_atomic, write_json
from hearflow.prepare.video import prepare_video
from hearflow.prepare.workers import WorkerPool

DEFAULT_TIMEOUT_S = 300.0  # per video; a decode that hangs longer is a "timeout" failure


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

    def report_lines(self, ids_file: str | Path | None = None) -> list[str]:
        """What a user must know beyond `line`: ids without a video, and a run that made nothing."""
        lines = []
        if self.missing_ids:
            lines.append(f"hearflow: {len(self.missing_ids)} id(s) of {ids_file or '--ids'} have no video "
                         f"(listed in {Path(self.out) / 'missing_ids.txt'})")
        if self.exit_status:
            lines.append("hearflow: error: no sample could be prepared")
        return lines

    def line(self) -> str:
        text = f"prepared {self.prepared}, skipped {self.skipped}"
        if self.skipped:
            text += f" ({self.already_done} finished earlier, {self.failed_before} failed earlier)"
        text += f", failed {self.failed} of {self.inputs} videos -> {self.out}"
        if self.failed or self.failed_before:
            text += f" (reasons in {self.failures_file})"
        return text


def _check_recipe(out: Path, recipe: dict) -> None:
    """Write prepare.json, or check that an existing one holds the same recipe."""
    path = out / "prepare.json"
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
            if not isinstance(earlier, dict):
                raise ValueError(f"it holds a {type(earlier).__name__}, not the recipe")
        except (OSError, ValueError, RecursionError) as error:
            raise HearflowError(f"{path} is unreadable ({error}); remove it or use a new output folder") from None
        earlier = {**RECIPE_ADDED, **earlier}
        differences = [f"{key} {earlier.get(key)!r} -> {recipe[key]!r}" for key in RECIPE_KEYS if earlier.get(key) != recipe[key]]
        if differences:
            raise HearflowError(
                f"{out} was prepared with another recipe ({'; '.join(differences)}); "
                "use a new output folder or the same options"
            )
        return
    from hearflow import __version__

    write_json(path, {**recipe, "hearflow_version": __version__})


def _remove_stale_temporaries(out: Path, sample_ids: set[str], shard) -> None:
    """Delete the temporaries killed runs left of this run's files (its samples' and its
    manifest's; the shared files' only when no shard can be running)."""
    for kind, folder in (("frame", "frames"), ("flow", "flow"), ("audio", "audio")):
        remove_stale_temporaries(out / folder, (sample_paths(out, sample_id)[kind].name for sample_id in sample_ids))
    shared = () if shard is not None else ("prepare.json", "missing_ids.txt")
    remove_stale_temporaries(out, (manifest_name(shard), failures_name(shard), *shared))


def _output_lock(out: Path, shard) -> ExitStack:
    """The locks a run holds on ``out`` (see the module docstring)."""
    locks = ExitStack()
    try:
        locks.enter_context(folder_lock(out / "prepare.lock", shared=shard is not None,
                                        busy="`hearflow prepare --shard` run(s)"))
        if shard is not None:
            locks.enter_context(folder_lock(out / f"prepare.shard-{shard[0]}-of-{shard[1]}.lock"))
    except BaseException:
        locks.close()
        raise
    return locks


def prepare(
    src: str | Path,
    out: str | Path,
    data_config: DataConfig | None = None,
    *,
    ids: str | Path | None = None,
    keyframes: str | Path | list[str | Path] | None = None,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retry_failed: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare every video of `src` (a folder, searched recursively, or a list file) into `out`.

    The recipe (audio rate and window, flow method, working size, pairs) comes from
    `data_config` (default: the ``htf`` preset's). `ids`: a file of ids to select;
    `keyframes`: a Flickr key-frame CSV, or several (a later file's entry wins for its id); `shard`: (I, N) to do only the ids whose
    stable hash falls in shard I. Returns a PrepareSummary; usage errors raise
    HearflowError.
    """
    config = data_config or DataConfig()
    Config(data=config).validate()
    if workers < 1:
        raise HearflowError(f"{option('--workers', 'workers')} must be at least 1, got {workers}")
    if timeout_s <= 0:
        raise HearflowError(f"{option('--timeout', 'timeout_s')} must be positive, got {timeout_s}")
    if config.sample_rate <= 0 or config.seconds <= 0:
        raise HearflowError("data.sample_rate and data.seconds (--sample-rate, --seconds) must be positive")
    recipe = recipe_of(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HearflowError(f"{out} is a file; the output must be a folder (a new one, or one prepare wrote)")
    summary = PrepareSummary(out=str(out), failures_file=str(out / failures_name(shard)))
    videos = _select_videos(src, ids, shard, summary)
    tasks, input_failures = _tasks(videos, read_keyframe_files(keyframes) if keyframes else {})
    with _output_lock(out, shard), _storage_errors_stop_the_run(out, summary):
        for folder in ("frames", "flow", "audio"):
            try:
                (out / folder).mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as error:  # OUT, or a folder above it, is a file
                raise HearflowError(f"cannot create {out / folder}: {error.strerror or error}") from None
        _check_recipe(out, recipe)
        _remove_stale_temporaries(out, {task[2] for task in tasks}, shard)
        manifest = CsvLog(
            out / manifest_name(shard),
            MANIFEST_COLUMNS,
            keep=lambda row: all(file_problem(p) is None for p in sample_paths(out, row["id"]).values()),
        )
        failures = CsvLog(out / failures_name(shard), FAILURE_COLUMNS)
        if retry_failed:
            inputs = {str(video) for video in videos}
            failures.remove(lambda row: row["video"] in inputs)
        todo = _still_to_do(tasks, input_failures, manifest, failures, summary)
        if todo:
            _run_tasks(todo, WorkerPool(min(workers, len(todo)), str(out), recipe, timeout_s), manifest, failures,
                       summary, progress)
        if summary.missing_ids:
            missing = "\n".join(summary.missing_ids) + "\n"
            write_atomic(out / "missing_ids.txt", missing.encode("utf-8", "surrogateescape"))
    return summary


@contextmanager
def _storage_errors_stop_the_run(out: Path, summary: PrepareSummary) -> Iterator[None]:
    """An OSError of OUT's storage inside the block becomes an `OutputStorageError`."""
    try:
        yield
    except OSError as error:
        if storage_problem(error) is None:
            raise
        remaining = summary.inputs - summary.prepared - summary.skipped - summary.failed
        raise OutputStorageError(out, error, remaining) from None


class OutputStorageError(HearflowError):
    """OUT cannot take more (no space, read-only, not permitted): one line saying what,
    where and, for a full disk, about how much room the videos still to do need."""

    def __init__(self, out: Path, error: OSError, remaining: int) -> None:
        problem = storage_problem(error) or str(error)
        where = error.filename or out
        text = f"cannot write {where}: {problem}"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            text += f" ({_megabytes(shutil.disk_usage(out).free)} free"
            per_sample = _sample_bytes(out)
            if per_sample and remaining > 0:
                text += (f"; the {remaining} video(s) still to do need about {_megabytes(per_sample * remaining)}, "
                         f"{_megabytes(per_sample)} per sample")
            text += "); make room"
        else:
            text += f"; make {out} writable"
        super().__init__(text + ", then rerun the same command: no video was recorded as failed")


def _sample_bytes(out: Path, count: int = 20) -> int:
    """The mean size of the finished samples of ``out`` (up to ``count`` looked at), 0 when none."""
    sizes = []
    for path in sorted((out / "flow").glob("*.npy"))[:count]:
        files = sample_paths(out, path.stem).values()
        if all(file.is_file() for file in files):
            sizes.append(sum(file.stat().st_size for file in files))
    return sum(sizes) // len(sizes) if sizes else 0


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _select_videos(src, ids, shard, summary: PrepareSummary) -> list[Path]:
    """The videos of ``src`` this run is responsible for (after ``ids`` and ``shard``)."""
    videos = find_videos(src)
    if not videos:
        raise HearflowError(f"no videos found in {src} (looked for {', '.join(VIDEO_SUFFIXES)})")
    if ids is not None:
        wanted = read_ids(ids)
        stems = {video.stem for video in videos}
        summary.missing_ids = [sample_id for sample_id in dict.fromkeys(wanted) if sample_id not in stems]
        wanted_set = set(wanted)
        videos = [video for video in videos if video.stem in wanted_set]
    if shard is not None:
        videos = [video for video in videos if shard_of(video.stem, shard[1]) == shard[0]]
    summary.inputs = len(videos)
    return videos


def _tasks(videos: list[Path], key_frames: dict[str, int]) -> tuple[list[tuple], list[tuple]]:
    """(tasks ``(number, video, id, one-based key frame or None)``, input failures ``(video, id, error)``)."""
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
    return tasks, input_failures


def _still_to_do(tasks, input_failures, manifest: CsvLog, failures: CsvLog, summary: PrepareSummary) -> list[tuple]:
    """Record this run's input failures; return the tasks neither finished nor failed before."""
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
    return todo


def _run_tasks(todo, pool: WorkerPool, manifest: CsvLog, failures: CsvLog, summary: PrepareSummary,
               progress: bool) -> None:
    """Prepare ``todo`` in the workers, appending each result to the manifest or the failures."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="video", desc="prepare", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for task, message in pool.run(todo):
            if message[0] == "storage":
                raise OSError(message[2], message[3], message[4])
            if message[0] == "ok":
                manifest.append(message[2])
                summary.prepared += 1
            else:
                error = " ".join(message[3].split())  # one line, whatever the error text held
                failures.append({"id": task[2], "video": task[1], "stage": message[2], "error": error})
                summary.failed += 1
            bar.update(1)
            bar.set_postfix(failed=summary.failed, refresh=False)
    finally:
        bar.close()


__all__ = ["DEFAULT_TIMEOUT_S", "RECIPE_KEYS", "OutputStorageError", "PrepareSummary", "WorkerPool", "prepare",
           "prepare_video"]
