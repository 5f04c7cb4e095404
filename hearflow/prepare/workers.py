"""Worker processes for `hearflow prepare`: one thread and one video at a time each, with a time limit."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.connection import wait

from hearflow.errors import HearflowError
from hearflow.prepare.video import OutputStorageFull, StageFailure, prepare_video

WORKER_START_TIMEOUT_S = 120.0


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
        except OutputStorageFull as full:
            message = ("storage", number, full.error.errno, full.error.strerror, full.error.filename)
        except Exception as error:  # a bug outside the stages: record it, keep the worker
            message = ("failed", number, "crash", f"{type(error).__name__}: {error}")
        try:
            connection.send(message)
        except (BrokenPipeError, OSError):
            return


def _worker_context():
    """Forkserver where the platform has it (workers start in milliseconds from a server
    that has imported the media stack once, and inherit no threads), else spawn.

    The forkserver is a new interpreter whose module path starts with the current
    folder (Python 3.11 ignores the parent's path there), so a ``hearflow/`` folder in
    it, such as the clone seen from its parent folder, would shadow the hearflow this
    process runs; it starts with this hearflow's folder on PYTHONPATH, where a regular
    package wins over such a folder. (Spawned children take this process's path.)
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["hearflow.media.video", "hearflow.media.audio", "hearflow.media.flow",
                                        "hearflow.data.prepared"])
        with _this_hearflow_on_pythonpath():
            forkserver.ensure_running()
        return context
    return multiprocessing.get_context("spawn")


@contextmanager
def _this_hearflow_on_pythonpath():
    """PYTHONPATH with the folder holding this process's ``hearflow`` package first, for the block."""
    import hearflow

    folder = str(Path(hearflow.__file__).resolve().parent.parent)
    earlier = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([folder, earlier] if earlier else [folder])
    try:
        yield
    finally:
        if earlier is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = earlier


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
            hint = ("; worker processes re-import the main script, so run prepare from a file or `python -c`, "
                    "not stdin") if getattr(sys.modules.get("__main__"), "__file__", None) == "<stdin>" else ""
            raise HearflowError(
                f"a prepare worker failed to start (exit code {process.exitcode}; its error is printed above{hint})"
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
        """Yield ``(task, message)`` for every task: ("ok", n, row), ("failed", n, stage, error) or
        ("storage", n, errno, strerror, filename) when the output cannot take the sample."""
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
