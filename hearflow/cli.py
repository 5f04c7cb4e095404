"""The `hearflow` command: parses arguments and calls one stage function.

No logic lives here. Each sub-command has one `_add_<name>` function that declares
its options and names the function that runs it; stages raise HearflowError for
problems a user can fix, which `main` prints as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from hearflow import __version__
from hearflow.errors import HearflowError


def _add_presets(commands) -> None:
    parser = commands.add_parser(
        "presets",
        help="list the named configurations (paper rows and ablations)",
        description="List the named presets, or print one as YAML to start a config file from.",
    )
    parser.add_argument("name", nargs="?", help="print this preset's full configuration as YAML")
    parser.set_defaults(run=_run_presets)


def _run_presets(args) -> int:
    import yaml

    from hearflow.config import PRESETS, preset_config

    if args.name:
        print(yaml.safe_dump(preset_config(args.name).to_dict(), sort_keys=False), end="")
    else:
        for name in PRESETS:
            print(name)
    return 0


COMMANDS = [
    _add_presets,
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except HearflowError as error:
        print(f"hearflow: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hearflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
