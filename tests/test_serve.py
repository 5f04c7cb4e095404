"""`hearflow serve`: the jobs' API with Flask's test client (known answers from a bright-square
model), then the page itself in a real headless Chromium: a bad file's message, an upload, the
overlay plays, the JSON is shown, and a screenshot is taken."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="the serve extra: pip install 'hearflow[serve]'")
pytest.importorskip("waitress", reason="the serve extra: pip install 'hearflow[serve]'")

from media_fixtures import tone_track, write_video  # noqa: E402
from test_localize import BrightSpotModel, inside, square_frame  # noqa: E402

from hearflow.cli import build_parser, main  # noqa: E402
from hearflow.localize import Localizer  # noqa: E402
from hearflow.serve import make_server  # noqa: E402
from hearflow.serve.app import create_app  # noqa: E402

BOX = (40, 30, 80, 70)  # the bright square of every frame of the clip
FRAMES = 24


@pytest.fixture
def clip(tmp_path) -> Path:
    frames = [square_frame(160, 120, BOX) for _ in range(FRAMES)]
    (tmp_path / "clips").mkdir()
    return write_video(tmp_path / "clips" / "square.mp4", fps=24, size=(160, 120), frames=frames,
                       audio=tone_track(1.0, 16000))


def _localizer() -> Localizer:
    return Localizer(BrightSpotModel(), device="cpu", sounding_threshold=-1e9)  # calibrated: every step sounds


@pytest.fixture
def app(tmp_path, clip):
    app = create_app(_localizer(), tmp_path / "work", clips=clip.parent, max_upload_mb=1)
    yield app
    app.extensions["hearflow_jobs"].close()


def _finished(client, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").get_json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {seconds} s: {status}")


def _upload(client, data: bytes, name: str):
    import io

    return client.post("/api/jobs", data={"clip": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_an_upload_is_localized_with_its_steps_and_a_seekable_overlay(app, clip, tmp_path):
    client = app.test_client()
    response = _upload(client, clip.read_bytes(), "my clip.mp4")
    assert response.status_code == 202
    status = _finished(client, response.get_json()["id"])
    assert status["state"] == "done" and status["done"] == status["total"] == FRAMES
    result = status["result"]
    assert result["video"] == "my clip.mp4" and (result["width"], result["height"]) == (160, 120)
    assert len(result["steps"]) == FRAMES
    assert all(inside(step["peak_xy"], BOX) and step["sounding"] is True for step in result["steps"])
    with client.get(status["overlay"], headers={"Range": "bytes=0-99"}) as partial:  # the player can seek
        assert partial.status_code == 206 and len(partial.data) == 100 and partial.data[4:8] == b"ftyp"
    job_folder = tmp_path / "work" / status["id"]
    assert (job_folder / "upload" / "my_clip.mp4").read_bytes() == clip.read_bytes()  # only in the work folder


def test_a_bad_file_is_one_message_and_the_server_keeps_running(app, clip):
    client = app.test_client()
    failed = _finished(client, _upload(client, b"these are not the frames you are looking for", "notes.mp4")
                       .get_json()["id"])
    assert failed["state"] == "failed" and failed["error"].startswith("notes.mp4")
    assert "\n" not in failed["error"] and "work" not in failed["error"]  # the server's folders stay private
    assert client.post("/api/jobs", data={}).get_json() == {
        "error": "no clip: choose a video file to upload, or pick a clip"}
    assert _finished(client, _upload(client, clip.read_bytes(), "again.mp4").get_json()["id"])["state"] == "done"


def test_uploads_over_the_limit_are_refused_before_anything_is_written(app, tmp_path):
    response = _upload(app.test_client(), b"\0" * 1_200_000, "big.mp4")
    assert response.status_code == 413
    assert response.get_json()["error"] == ("the clip is larger than this server's limit of 1 MB "
                                            "(hearflow serve --max-upload-mb)")
    assert list((tmp_path / "work").iterdir()) == []


def test_only_the_clips_folder_can_be_picked(app):
    client = app.test_client()
    info = client.get("/api/info").get_json()
    assert info["clips"] == ["square.mp4"] and info["calibrated"] is True and info["max_upload_mb"] == 1
    assert _finished(client, client.post("/api/jobs", data={"pick": "square.mp4"}).get_json()["id"])["state"] == "done"
    refused = client.post("/api/jobs", data={"pick": "../clips/square.mp4"})
    assert refused.status_code == 404 and "not one of the clips" in refused.get_json()["error"]


def test_the_server_listens_on_localhost_by_default_and_cleans_up(tmp_path):
    parsed = build_parser().parse_args(["serve", "--checkpoint", "model.pt"])
    assert (parsed.host, parsed.port, parsed.max_upload_mb) == ("127.0.0.1", 7860, 200)
    server, app = make_server(_localizer(), port=0)
    workdir = app.extensions["hearflow_jobs"].root
    assert server.effective_host == "127.0.0.1" and workdir.is_dir()
    server.close()
    app.extensions["hearflow_jobs"].close()
    assert not workdir.exists()
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 1


@pytest.mark.slow
def test_hearflow_serve_starts_with_one_command_and_stops_clean(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    import torch

    from hearflow import build_model
    from hearflow.checkpoint import save_checkpoint
    from hearflow.synthetic.presets import demo_config

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model(config=demo_config("cpu-small")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # started as a shell without job control starts `cmd &` (CI scripts): with SIGINT ignored
    server = subprocess.Popen([sys.executable, "-m", "hearflow.cli", "serve", "--checkpoint", str(tmp_path / "model.pt"),
                               "--port", str(port), "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline, info = time.monotonic() + 120, None
        while info is None and time.monotonic() < deadline and server.poll() is None:
            try:
                info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5).read())
            except OSError:
                time.sleep(0.3)
        assert info == {"checkpoint": "model.pt", "calibrated": False, "sounding_threshold": None,
                        "trained_on_synthetic": False, "clips": [], "max_upload_mb": 200}
        assert len(list((tmp_path / "tmp").glob("hearflow-serve-*"))) == 1
    finally:
        server.send_signal(signal.SIGINT)
        _, errors = server.communicate(timeout=60)
    assert f"on http://127.0.0.1:{port}/" in errors
    assert list((tmp_path / "tmp").glob("hearflow-serve-*")) == []  # the uploads' temporary folder is gone


def _browser():
    """A headless Chromium driven by its chromedriver (Debian: apt-get install chromium chromium-driver)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver") or next(
        (path for path in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(path).exists()), None)
    if binary is None or driver is None:
        pytest.skip("no browser: the page test needs Chromium and chromedriver "
                    "(apt-get install chromium chromium-driver), and none could be installed here")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not fetch drivers: nothing downloads in tests
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.mark.slow
def test_the_page_in_a_headless_browser_uploads_plays_and_shows_the_json(clip, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    server, app = make_server(_localizer(), port=0, clips=clip.parent)
    def run():
        try:
            server.run()
        except (OSError, ValueError):  # its select saw the socket that server.close() shut from this thread
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.effective_port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: "calibrated" in b.find_element(By.ID, "model").text)
        broken = tmp_path / "broken.mp4"
        broken.write_text("not a video")
        browser.find_element(By.ID, "clip-file").send_keys(str(broken))
        browser.find_element(By.ID, "upload").click()
        wait.until(lambda b: b.find_element(By.ID, "error").text.startswith("broken.mp4"))  # said on the page
        browser.find_element(By.ID, "clip-file").send_keys(str(clip))  # and the server still answers
        browser.find_element(By.ID, "upload").click()
        wait.until(lambda b: b.execute_script("return document.getElementById('overlay').readyState") >= 2)
        browser.execute_script("const v = document.getElementById('overlay'); v.muted = true; v.play();")
        wait.until(lambda b: b.execute_script("return document.getElementById('overlay').currentTime") > 0.2)
        shown = json.loads(browser.find_element(By.ID, "steps-json").text)
        assert len(shown["steps"]) == FRAMES and all(inside(s["peak_xy"], BOX) for s in shown["steps"])
        assert "square.mp4: 24 steps" in browser.find_element(By.ID, "status").text
        assert browser.find_element(By.ID, "error").text == ""
        screenshot = tmp_path / "serve.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()
        server.close()
        app.extensions["hearflow_jobs"].close()
