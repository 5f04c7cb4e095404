"""Error messages a user can act on, for both audiences: a message that names a command-line
flag names the Python argument too, and a wrong output path is one line, not a traceback."""

from __future__ import annotations

import pytest
from fixtures_train import small_config

from hearflow.cli import main
from hearflow.config import resolve
from hearflow.distributed import resolve_device
from hearflow.errors import HearflowError, Problems, option
from hearflow.evaluate import evaluate
from hearflow.localize import Localizer
from hearflow.localize.steps import check_step_options
from hearflow.model import build_model
from hearflow.prepare import prepare
from hearflow.synthetic.demo import run_demo
from hearflow.train import train
from media_fixtures import tone_track, write_video


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(HearflowError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_option_names_the_flag_and_the_python_argument():
    assert option("--allow-silent", "allow_silent=True") == "--allow-silent (Python: allow_silent=True)"


def test_problems_raise_nothing_one_message_or_all_numbered():
    problems = Problems("nothing can start")
    problems.raise_any()
    assert problems.attempt(int, "7") == 7
    problems.add("first")
    assert _message(problems.raise_any) == "first"
    assert problems.attempt(resolve_device, "gpu") is None
    assert _message(problems.raise_any) == ("nothing can start, 2 problems: (1) first; (2) the device is 'gpu'; "
                                            "choose auto, cpu, cuda or cuda:N")


def test_python_api_errors_name_arguments_beside_flags(tmp_path):
    assert "--every SECONDS (Python: every=SECONDS) or --key-frame (Python: key_frame_only=True)" in _message(
        check_step_options, 1.0, True)
    assert "--every (Python: every) must be a positive" in _message(check_step_options, -1.0, False)
    assert _message(evaluate, tmp_path / "model.pt", tmp_path, tmp_path / "a.json", batch_size=0) == (
        "--batch-size (Python: batch_size) must be positive, --num-maps (Python: num_maps) and --workers "
        "(Python: workers) not negative; got 0, 8 and 2")
    assert "--workers (Python: workers) must be at least 1" in _message(prepare, tmp_path, tmp_path / "o", workers=0)
    assert "--timeout (Python: timeout_s) must be positive" in _message(prepare, tmp_path, tmp_path / "o",
                                                                          timeout_s=0)
    assert "--seed (Python: seed) must be >= 0" in _message(run_demo, tmp_path / "demo", seed=-1)
    assert "--set (Python: an entry of sets) expects KEY=VALUE" in _message(resolve, "htf", None, ["model.prior"])
    assert "pass --train DIR (Python: train_dir)" in _message(train, small_config(), None, tmp_path / "run")
    assert ("both --val DIR (Python: val_dir) and --val-annotations PATH (Python: val_annotations)"
            in _message(train, small_config(), tmp_path, tmp_path / "run", val_dir=tmp_path))


def test_a_video_without_sound_names_allow_silent_for_both(tmp_path):
    mute = write_video(tmp_path / "mute.mp4", n_frames=4, fps=25, size=(64, 48))
    localizer = Localizer(build_model(config=small_config()).eval(), device="cpu")
    message = _message(lambda: list(localizer.localize(mute)))
    assert message == (f"{mute}: no audio track, so there is no sound to localize "
                       "(--allow-silent (Python: allow_silent=True) localizes with silence)")


def test_prepare_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", n_frames=4, fps=25, size=(64, 48), audio=tone_track(0.2, 16000))
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    assert main(["prepare", str(tmp_path / "videos"), str(taken), "--quiet"]) == 1
    assert capsys.readouterr().err == (f"hearflow: error: {taken} is a file; the output must be a folder "
                                       "(a new one, or one prepare wrote)\n")
    assert main(["prepare", str(tmp_path / "videos"), str(taken / "inside"), "--quiet"]) == 1
    assert capsys.readouterr().err == f"hearflow: error: cannot write to {taken / 'inside'}: Not a directory\n"
