"""The serve page's Flask application: the page, the jobs' API and the overlay videos.

    GET  /                          the page (page.html)
    GET  /api/info                  the checkpoint, whether it is calibrated, the clips to pick, the upload limit
    POST /api/jobs                  a clip (multipart ``clip``) or ``pick`` (a name of /api/info's clips) -> {"id"}
    GET  /api/jobs/ID               state, progress (done of total frames), error, and the steps' JSON once done
    GET  /api/jobs/ID/overlay.mp4   the overlay video (range requests, so the player can seek)

Every error is JSON ``{"error": "one line"}`` with a 4xx status; a clip that cannot be
localized fails its job (the page shows the message) and the server keeps running.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import Flask, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from hearflow.data.lists import find_videos
from hearflow.localize import Localizer
from hearflow.serve.jobs import Jobs, shown_checkpoint


def create_app(localizer: Localizer, workdir: str | Path, clips: str | Path | None = None,
               max_upload_mb: float = 200, every: float | None = None) -> Flask:
    """The Flask app of `hearflow serve`: ``localizer`` runs every job, uploads and outputs go under
    ``workdir`` (a temporary folder), ``clips`` is a folder of videos to pick from, uploads larger
    than ``max_upload_mb`` MB are refused, ``every`` is the seconds between steps (None: every frame).
    ``app.extensions["hearflow_jobs"].close()`` waits for the running job and removes ``workdir``."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1e6)
    jobs = Jobs(localizer, Path(workdir), every)
    app.extensions["hearflow_jobs"] = jobs
    offered = {str(path.relative_to(clips)): path for path in find_videos(Path(clips))} if clips else {}
    page = files("hearflow.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/")
    def index():
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/info")
    def info():
        return jsonify(checkpoint=shown_checkpoint(localizer.checkpoint),
                       calibrated=localizer.options.sounding_threshold is not None,
                       sounding_threshold=localizer.options.sounding_threshold,
                       trained_on_synthetic=localizer.trained_on_synthetic, clips=sorted(offered),
                       max_upload_mb=max_upload_mb)

    @app.post("/api/jobs")
    def submit():
        upload, pick = request.files.get("clip"), request.form.get("pick")
        if pick:
            if pick not in offered:
                return _error(f"{pick}: not one of the clips this server offers", 404)
            job_id, folder = jobs.new_folder()
            return jsonify(id=jobs.submit(job_id, folder, offered[pick], pick).id), 202
        if upload is None or not upload.filename:
            return _error("no clip: choose a video file to upload, or pick a clip", 400)
        job_id, folder = jobs.new_folder()
        name = secure_filename(upload.filename) or "clip.mp4"
        (folder / "upload").mkdir()
        upload.save(folder / "upload" / name)
        return jsonify(id=jobs.submit(job_id, folder, folder / "upload" / name, upload.filename).id), 202

    @app.get("/api/jobs/<job_id>")
    def status(job_id: str):
        job = jobs.get(job_id)
        return jsonify(job.status()) if job else _error(f"no job {job_id} (the server forgets old jobs)", 404)

    @app.get("/api/jobs/<job_id>/overlay.mp4")
    def overlay(job_id: str):
        job = jobs.get(job_id)
        if job is None or job.overlay is None or not job.overlay.is_file():
            return _error(f"job {job_id} has no overlay video (yet)", 404)
        return send_file(job.overlay, mimetype="video/mp4", conditional=True)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return _error(f"the clip is larger than this server's limit of {max_upload_mb:g} MB "
                      "(hearflow serve --max-upload-mb)", 413)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _error(f"{error.code} {error.name}: {error.description}", error.code or 500)

    return app


def _error(message: str, code: int):
    return jsonify(error=message), code
