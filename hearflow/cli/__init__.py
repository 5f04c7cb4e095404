"""The `hearflow` command: parses arguments, resolves the config and calls one stage.

No logic lives here. Each sub-command has one `add_<name>` function (in `data`, `models`, `apps` or `share`) that
declares its options and names the function that runs it. Options that set a config field
have that field as their ``dest`` (``--epochs`` is ``train.epochs``), so every command
builds its config the same way (`hearflow.config.resolve`: preset < --config <
--set < these flags). Stages raise HearflowError for problems a user can fix, which
`main` prints as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from hearflow import __version__
from hearflow.cli.apps import add_demo, add_localize
from hearflow.cli.data import add_pack, add_prepare, add_synth
from hearflow.cli.models import add_calibrate, add_evaluate, add_export, add_presets, add_train
from hearflow.cli.share import add_push, add_serve
from hearflow.errors import HearflowError

COMMANDS = [  # in pipeline order
    add_synth,
    add_prepare,
    add_pack,
    add_train,
    add_calibrate,
    add_evaluate,
    add_localize,
    add_export,
    add_push,
    add_serve,
    add_demo,
    add_presets,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearflow",
        description="Self-supervised visual sound-source localization with an optical-flow prior "
        "(Hear The Flow, WACV 2023): prepare videos, train, evaluate and localize.",
    )
    parser.add_argument("--version", action="version", version=f"hearflow {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    for command in commands.choices.values():  # an unknown option is reported with its command's usage
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not stop the output
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except HearflowError as error:
        print(f"hearflow: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hearflow: interrupted", file=sys.stderr)
        return 130


def _one_line(error: HearflowError) -> str:
    """The error's message; for one a DataLoader worker raised again (its message is then the
    worker's traceback), the worker's own message, the traceback's last line."""
    message = str(error)
    if "\nOriginal Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message
