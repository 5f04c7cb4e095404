"""The serve page's jobs: one clip localized in the background, its progress polled by the page.

Each job has its own folder under the server's temporary folder (the upload, when there is
one, and the outputs of `hearflow.localize.localize_video`); jobs run one at a time on the
one model; the oldest finished jobs' folders are removed beyond `KEEP_JOBS`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearflow.errors import HearflowError
from hearflow.localize import Localizer, localize_video

KEEP_JOBS = 16  # finished jobs whose files are kept for the page; older ones are removed


@dataclass
class Job:
    """One clip: ``state`` queued -> running -> done | failed, ``done`` of ``total`` frames decoded."""

    id: str
    name: str
    video: Path
    folder: Path
    state: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None
    overlay: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def status(self) -> dict[str, Any]:
        """What the page polls: the state, the progress and, once done, the steps' JSON."""
        with self.lock:
            return {"id": self.id, "name": self.name, "state": self.state, "done": self.done, "total": self.total,
                    "error": self.error, "result": self.result,
                    "overlay": f"/api/jobs/{self.id}/overlay.mp4" if self.overlay else None}

    def progress(self, done: int, total: int) -> None:
        with self.lock:
            self.done, self.total = done, total


class Jobs:
    """The jobs of one server: ``submit`` a video, ``get`` a job by id, ``close`` at the end."""

    def __init__(self, localizer: Localizer, root: Path, every: float | None = None) -> None:
        self.localizer, self.root, self.every = localizer, Path(root), every
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hearflow-serve")  # one model, one clip at a time

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (created) folder under the server's temporary folder."""
        job_id = secrets.token_hex(8)
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def submit(self, job_id: str, folder: Path, video: Path, name: str) -> Job:
        """Queue ``video`` (shown as ``name``) for localizing into ``folder``."""
        job = Job(job_id, name, Path(video), folder)
        with self.lock:
            self.jobs[job_id] = job
            self._forget_old()
        self.pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def close(self) -> None:
        """Stop taking jobs, wait for the running one, remove every job's files."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, job: Job) -> None:
        with job.lock:
            job.state = "running"
        try:
            written = localize_video(self.localizer, job.video, job.folder / "out", every=self.every, progress=False,
                                     on_frame=job.progress)
            result = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
            result["video"] = job.name  # the names, not the server's paths
            result["checkpoint"] = shown_checkpoint(result.get("checkpoint"))
            with job.lock:
                job.state, job.result, job.overlay = "done", result, Path(written["overlay"])
        except Exception as error:  # a bad clip fails its job; the server keeps running
            with job.lock:
                job.state, job.error = "failed", _message(error, job)

    def _forget_old(self) -> None:
        finished = [job for job in self.jobs.values() if job.state in ("done", "failed")]
        for job in finished[: max(0, len(finished) - KEEP_JOBS)]:
            del self.jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)


def shown_checkpoint(checkpoint: str | None) -> str | None:
    """How the page names a checkpoint: an ``hf://`` name as it is, a file or folder by its name only."""
    if not checkpoint:
        return None
    return checkpoint if checkpoint.startswith("hf://") else Path(checkpoint).name


def _message(error: Exception, job: Job) -> str:
    """One line for the page, naming the clip by the name it was given (never the server's paths)."""
    text = str(error).replace(str(job.video), job.name).replace(str(job.folder), "")
    if not isinstance(error, (HearflowError, OSError)):
        text = f"{job.name}: could not be localized ({type(error).__name__}: {text.splitlines()[0] if text else ''})"
    elif job.name not in text:
        text = f"{job.name}: {text}"
    return text.strip().splitlines()[0] if text.strip() else f"{job.name}: could not be localized"
