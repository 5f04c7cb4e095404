"""What a new user reads first: the commands in pipeline order, every option explained, each
preset with what it is, and the public API visible to completion."""

from __future__ import annotations

import argparse
import re

import hearflow
from hearflow.cli import build_parser, main
from hearflow.config import PRESETS


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_commands_are_listed_in_pipeline_order():
    parser = build_parser()
    pipeline = ["synth", "prepare", "pack", "train", "calibrate", "evaluate", "localize", "export", "push", "serve",
                "demo", "presets"]
    listed = list(_commands(parser))
    assert set(listed) <= set(pipeline), set(listed) - set(pipeline)  # a new command: place it in the pipeline
    assert {"synth", "prepare", "train", "evaluate", "localize", "demo", "presets"} <= set(listed)
    assert listed == sorted(listed, key=pipeline.index)
    text = parser.format_help()
    positions = [re.search(rf"^ +{name}\b", text, re.M).start() for name in _commands(parser)]
    assert positions == sorted(positions)


def test_every_option_of_every_command_has_help():
    for name, command in _commands(build_parser()).items():
        for action in command._actions:
            assert action.help, (name, action.option_strings or action.dest)


def test_presets_prints_each_preset_with_its_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    for line, (name, preset) in zip(lines, PRESETS.items()):
        assert preset.description and line.endswith(preset.description) and line[len(name):].startswith("  ")
    cited = ("Table", "released", "ECCV 2022", "CVPR 2023", "NeurIPS 2022")  # a paper row, the code, or the method's paper
    assert all(any(source in p.description for source in cited) for p in PRESETS.values())


def test_the_public_api_is_visible_to_completion():
    names = dir(hearflow)
    for name in hearflow.__all__:
        assert name in names and getattr(hearflow, name) is not None
    assert {"build_model", "load", "Localizer", "Config", "HearflowError"} <= set(names)
