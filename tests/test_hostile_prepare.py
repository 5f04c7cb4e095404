"""`hearflow prepare` against hostile inputs: odd names, symlinks, a full disk, concurrent runs,
a folder that holds a `hearflow/` directory. Every case is made by the test itself."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hearflow.cli import main
from hearflow.data.dataset import PreparedDataset
from hearflow.data.lists import find_videos, read_ids
from hearflow.data.prepared import PreparedFolder, sample_paths
from hearflow.io import csv_text, read_csv, remove_stale_temporaries, temporary_name
from hearflow.synthetic.presets import demo_config
from media_fixtures import tone_track, write_video

REPO = Path(__file__).resolve().parents[1]


def small_clip(path: Path) -> Path:
    return write_video(path, 8, 24, (64, 48), audio=tone_track(0.4, 16000), sample_rate=16000)


def manifest_ids(out: Path, name: str = "manifest.csv") -> list[str]:
    records, tail = read_csv((out / name).read_bytes().decode("utf-8", "surrogateescape"))
    assert tail == ""
    return [record[0] for record in records[1:]]


def failure_rows(out: Path, name: str = "failures.csv") -> list[list[str]]:
    records, _ = read_csv((out / name).read_bytes().decode("utf-8", "surrogateescape"))
    return records[1:]


# ---------------------------------------------------------------- names

ODD_IDS = [
    os.fsdecode(b"caf\xe9-latin1"),  # not valid UTF-8: a surrogate-escaped str
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "comma,in,it",
    '"quoted"',
    "=1+1",
    "@SUM(A1)",
    "-abc_000030",
    "'apostrophe",
    " padded ",
    "x" * 250,  # a legal 250-character name (254 with .jpg): its temporary must not be longer
]


def test_odd_file_names_are_prepared_and_their_ids_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for sample_id in ODD_IDS:
        small_clip(src / f"{sample_id}.mp4")
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    assert sorted(manifest_ids(out)) == sorted(ODD_IDS)
    assert failure_rows(out) == []
    text = (out / "manifest.csv").read_bytes().decode("utf-8", "surrogateescape")
    assert "\n'=1+1," in text and "\n'@SUM(A1)," in text and "\n''apostrophe," in text  # spreadsheet-safe
    assert "\n-abc_000030," in text  # a YouTube id starting with '-' calls nothing: written as it is
    folder = PreparedFolder(out)
    assert sorted(folder.ids) == sorted(ODD_IDS)
    dataset = PreparedDataset(folder, demo_config("cpu-small"), train=False)
    assert sorted(dataset.ids) == sorted(ODD_IDS) and not dataset.skipped
    assert {dataset[i]["id"] for i in range(len(dataset))} == set(ODD_IDS)
    # The manifest as an --ids file selects every one of them again, exactly.
    assert sorted(read_ids(out / "manifest.csv")) == sorted(ODD_IDS)
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0  # a rerun redoes nothing
    assert sorted(manifest_ids(out)) == sorted(ODD_IDS)


def test_ids_selects_an_id_with_a_comma_or_a_line_break(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for sample_id in ("comma,in,it", "line\nbreak", "plain", "other"):
        small_clip(src / f"{sample_id}.mp4")
    ids = tmp_path / "ids.csv"
    ids.write_text(csv_text(["id"], [["comma,in,it"], ["line\nbreak"], ["plain"]]))
    assert read_ids(ids) == ["comma,in,it", "line\nbreak", "plain"]
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--ids", str(ids), "--quiet"]) == 0
    assert sorted(manifest_ids(out)) == ["comma,in,it", "line\nbreak", "plain"]
    assert not (out / "missing_ids.txt").exists()


def test_csv_cells_round_trip_and_formulas_are_guarded():
    cells = ["=1+1", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "'q", "-1.5", "+5",
             "-abc_000030", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "\udce9", ""]
    text = csv_text(["cell"], [[cell] for cell in cells])
    records, tail = read_csv(text)
    assert tail == "" and [record[0] for record in records[1:]] == cells
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:]  # what a spreadsheet or pandas sees
    dangerous = {"=1+1", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx"}
    for (seen,), cell in zip(rows, cells):
        assert seen == ("'" + cell if cell in dangerous or cell.startswith("'") else cell)


def test_stale_temporaries_are_matched_by_their_exact_pattern(tmp_path):
    """Ids ``a`` and ``a.tmp-1``: a run limited to ``a`` removes a's leftovers only."""
    src = tmp_path / "src"
    src.mkdir()
    for sample_id in ("a", "a.tmp-1", "b"):
        small_clip(src / f"{sample_id}.mp4")
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    finished = {path: path.read_bytes() for sample_id in ("a.tmp-1", "b")
                for path in sample_paths(out, sample_id).values()}
    stale = [out / "frames" / "a.jpg.tmp-999999", out / "flow" / "a.png.tmp-12", out / "manifest.csv.tmp-7"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    assert main(["prepare", str(src), str(out), "--ids", str(ids), "--quiet"]) == 0
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == data for path, data in finished.items())
    assert sorted(manifest_ids(out)) == ["a", "a.tmp-1", "b"]


def test_temporary_names_of_long_names_fit_and_are_cleaned_exactly(tmp_path):
    long_name = "y" * 250 + ".npy"
    temporary = temporary_name(tmp_path / long_name)
    assert len(os.fsencode(temporary.name)) <= 255 and temporary.parent == tmp_path
    temporary.write_bytes(b"stale")
    (tmp_path / "z.npy.tmp-5.tmp-6").write_bytes(b"temporary of a temporary")
    (tmp_path / "z.tmp-5.npy").write_bytes(b"another sample's finished file")
    assert remove_stale_temporaries(tmp_path, [long_name, "z.npy"]) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["z.tmp-5.npy"]


def test_videos_under_symlinked_folders_are_found_once(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "real").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("one", "two"):
        small_clip(src / "real" / f"{name}.mp4")
    small_clip(elsewhere / "three.mp4")
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "real" / "loop").symlink_to(src, target_is_directory=True)  # a loop back to the top
    (src / "again").symlink_to(src / "real", target_is_directory=True)  # the same folder twice
    (src / "four.mp4").symlink_to(src / "real" / "one.mp4")  # a linked file is a video of its own
    assert sorted(path.stem for path in find_videos(src)) == ["four", "one", "three", "two"]
    out = tmp_path / "out"
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    assert sorted(manifest_ids(out)) == ["four", "one", "three", "two"]


# ---------------------------------------------------------------- processes of their own

FULL_DISK = """
import errno, os
import hearflow.io

_limit_file, _folder = os.environ["FAKE_DISK_LIMIT"], os.environ["FAKE_DISK_FOLDER"]
_write_atomic = hearflow.io.write_atomic


def _used():
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(_folder) for name in names)


def write_atomic(path, data):
    if str(path).startswith(_folder) and _used() + len(data) > int(open(_limit_file).read()):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    _write_atomic(path, data)


hearflow.io.write_atomic = write_atomic
"""

FINDER = """
import importlib.abc, importlib.machinery, importlib.util, sys

_package = {package!r}


class _Finder(importlib.abc.MetaPathFinder):
    # What an editable install does: a finder after the path-based one.
    def find_spec(self, name, path=None, target=None):
        if name != "hearflow":
            return None
        return importlib.util.spec_from_file_location(
            name, _package + "/__init__.py", submodule_search_locations=[_package])


sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder) + 1, _Finder())
"""


def run_hearflow(args, *, cwd=None, site=None, env=None, background=False):
    """`hearflow ARGS` in a process of its own (the repository on its path unless ``site`` replaces it)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [site or REPO])), **(env or {})}
    command = [sys.executable, "-m", "hearflow.cli", *map(str, args)]
    if background:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace")
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, errors="replace",
                          timeout=300)


def test_a_full_disk_stops_the_run_with_one_line_and_a_plain_rerun_finishes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for index in range(8):
        small_clip(src / f"v{index}.mp4")
    out, limit = tmp_path / "out", tmp_path / "limit"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK)  # every process of the run sees the small disk
    limit.write_text(str(400_000))  # room for about three samples of 120 kB
    env = {"FAKE_DISK_LIMIT": str(limit), "FAKE_DISK_FOLDER": str(out)}
    first = run_hearflow(["prepare", src, out, "--quiet"], site=f"{site}{os.pathsep}{REPO}", env=env)
    assert first.returncode == 1, first.stderr
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in first.stderr, first.stderr
    assert lines[0].startswith(f"hearflow: error: cannot write {out}") and "No space left on device" in lines[0]
    assert "MB free" in lines[0] and "rerun the same command" in lines[0] and "no video was recorded as failed" in lines[0]
    assert 0 < len(manifest_ids(out)) < 8 and failure_rows(out) == []
    limit.write_text(str(10**9))  # space freed
    second = run_hearflow(["prepare", src, out, "--quiet"], site=f"{site}{os.pathsep}{REPO}", env=env)
    assert second.returncode == 0, second.stderr
    assert sorted(manifest_ids(out)) == [f"v{index}" for index in range(8)] and failure_rows(out) == []
    assert not list(out.rglob("*.tmp-*"))


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    small_clip(tmp_path / "a.mp4")
    out = tmp_path / "out"
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["prepare", str(tmp_path), str(out), "--quiet"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"hearflow: error: cannot write to {out}: Read-only file system"]


def slow_source(tmp_path: Path, count: int = 6) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for index in range(count):
        small_clip(src / f"v{index}.mp4")
    return src


def wait_for_lock(out: Path, name: str = "prepare.lock", timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = (out / name).read_text() if (out / name).exists() else ""
        if holder:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"{out / name} was never taken")


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    src, out = slow_source(tmp_path), tmp_path / "out"
    first = run_hearflow(["prepare", src, out, "--quiet"], background=True)
    try:
        holder = wait_for_lock(out)
        assert holder.startswith(f"pid {first.pid} on ")
        assert main(["prepare", str(src), str(out), "--quiet"]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"is in use by pid {first.pid}" in error[0] and "prepare" in error[0]
    finally:
        first.wait(300)
    assert first.returncode == 0, first.stderr.read()
    assert sorted(manifest_ids(out)) == [f"v{index}" for index in range(6)]  # each id once


@pytest.mark.slow
def test_a_killed_run_does_not_hold_the_folder(tmp_path):
    src, out = slow_source(tmp_path), tmp_path / "out"
    first = run_hearflow(["prepare", src, out, "--quiet"], background=True)
    wait_for_lock(out)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(60)
    assert main(["prepare", str(src), str(out), "--quiet"]) == 0
    assert sorted(manifest_ids(out)) == [f"v{index}" for index in range(6)]


@pytest.mark.slow
def test_shard_runs_share_a_folder_side_by_side_and_a_whole_run_waits(tmp_path, capsys):
    src, out = slow_source(tmp_path), tmp_path / "out"
    shard = run_hearflow(["prepare", src, out, "--shard", "0/2", "--quiet"], background=True)
    try:
        wait_for_lock(out, "prepare.shard-0-of-2.lock")
        assert main(["prepare", str(src), str(out), "--quiet"]) == 1
        assert "is in use by `hearflow prepare --shard` run(s)" in capsys.readouterr().err
        assert main(["prepare", str(src), str(out), "--shard", "1/2", "--quiet"]) in (0, 1)
    finally:
        shard.wait(300)
    assert shard.returncode in (0, 1), shard.stderr.read()
    assert sorted(PreparedFolder(out).ids) == [f"v{index}" for index in range(6)]


def test_prepare_works_from_a_folder_that_holds_a_hearflow_folder(tmp_path):
    """Seen from the clone's parent folder, the clone is a `hearflow/` folder without __init__.py."""
    (tmp_path / "videos").mkdir()
    small_clip(tmp_path / "videos" / "a.mp4")
    site, bin_folder, work = tmp_path / "site", tmp_path / "bin", tmp_path / "work"
    for folder in (site, bin_folder, work / "hearflow"):
        folder.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(FINDER.format(package=str(REPO / "hearflow")))
    script = bin_folder / "hearflow"  # as pip writes the console script; its folder, not the current one, is on the path
    script.write_text("import sys\nfrom hearflow.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    environment = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, str(script), "prepare", str(tmp_path / "videos"), "out", "--quiet"],
                            cwd=work, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert manifest_ids(work / "out") == ["a"]


def test_output_naming_a_path_that_is_not_utf8_never_stops_the_run(tmp_path):
    (tmp_path / "src").mkdir()
    small_clip(tmp_path / "src" / "a.mp4")
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out-\xff"))
    result = run_hearflow(["prepare", tmp_path / "src", out, "--quiet"], env={"PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("-> " + str(tmp_path) + "/out-\\udcff")
    assert manifest_ids(out) == ["a"]


def test_an_error_raised_again_by_a_loader_worker_is_still_one_line(monkeypatch, capsys):
    """torch re-raises a worker's error with the worker's traceback as its message."""
    import hearflow.cli.models
    from hearflow.errors import HearflowError
    from torch._utils import ExceptionWrapper

    def failing_in_a_worker(args):
        try:
            raise HearflowError("sample 'x': /data/frames/x.jpg is truncated (no JPEG end-of-image marker)")
        except HearflowError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    monkeypatch.setattr(hearflow.cli.models, "_run_presets", failing_in_a_worker)
    assert main(["presets"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "hearflow: error: sample 'x': /data/frames/x.jpg is truncated (no JPEG end-of-image marker)"]
