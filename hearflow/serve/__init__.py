"""`hearflow serve`: a web page to try a model on a clip.

Upload a video (or pick one of ``--clips``), watch its overlay video with the sound, the
per-step JSON (time, peak, box, confidence, and ``sounding`` for a calibrated
checkpoint) and the timeline of confidence. The page polls a job for its progress
while a long clip is localized (`hearflow.localize.localize_video`'s ``on_frame``).
Flask serves the page and its small API (`hearflow.serve.app`), waitress runs it.

Safe by default: it listens on 127.0.0.1 unless told otherwise; uploads are limited
in size and written only under a temporary folder, removed when the server stops; a
clip that cannot be localized is a message on the page, not a stopped server.
Needs ``pip install "hearflow[serve]"``.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path

from hearflow.errors import HearflowError
from hearflow.localize import Localizer

INSTALL = 'pip install "hearflow[serve]"'


def make_server(localizer: Localizer, host: str = "127.0.0.1", port: int = 7860, clips: str | Path | None = None,
                max_upload_mb: float = 200, every: float | None = None):
    """(a waitress server, not yet running, for the page of ``localizer``; the Flask app).

    ``port`` 0 picks a free one (``server.effective_port``). Run it with ``server.run()``;
    afterwards ``app.extensions["hearflow_jobs"].close()`` removes the temporary folder.
    """
    try:
        import waitress

        from hearflow.serve.app import create_app
    except ImportError:
        raise HearflowError(f"hearflow serve needs Flask and waitress: {INSTALL}") from None
    if not max_upload_mb > 0:
        raise HearflowError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if clips is not None and not Path(clips).is_dir():
        raise HearflowError(f"--clips {clips}: not a folder")
    workdir = tempfile.mkdtemp(prefix="hearflow-serve-")
    app = create_app(localizer, workdir, clips=clips, max_upload_mb=max_upload_mb, every=every)
    try:
        server = waitress.create_server(app, host=host, port=port, threads=4,
                                        max_request_body_size=int(max_upload_mb * 1e6) + 2**20)
    except OSError as error:
        app.extensions["hearflow_jobs"].close()
        raise HearflowError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return server, app


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860, clips: str | Path | None = None,
          max_upload_mb: float = 200, every: float | None = None, device: str = "auto") -> None:
    """`hearflow serve`: the page for ``checkpoint`` (a file, a Hub folder or ``hf://USER/REPO``) until Ctrl-C."""
    localizer = Localizer.from_checkpoint(checkpoint, device)
    server, app = make_server(localizer, host, port, clips, max_upload_mb, every)
    shown = f"[{host}]" if ":" in host else host
    print(f"hearflow serve: {checkpoint} on http://{shown}:{server.effective_port}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        _stop_on_signals()
        server.run()
    finally:
        server.close()
        app.extensions["hearflow_jobs"].close()


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop the server through KeyboardInterrupt, so the temporary
    folder is removed: also when SIGINT was ignored at start, as it is for a command started in
    the background by a shell without job control (CI scripts, ``cmd &``)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set in the main thread; its handlers apply

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
