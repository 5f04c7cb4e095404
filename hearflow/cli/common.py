"""What every command's options share: the config options and the flags that are config fields."""

from __future__ import annotations


def config_options(parser, preset_help: str) -> None:
    parser.add_argument("--preset", help=preset_help + "; see `hearflow presets`")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (any subset of the sections that "
                        "`hearflow presets NAME` prints)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config field, e.g. --set model.prior=spatial (repeatable)")


def config_flags(args) -> dict:
    """The options whose dest is a config field (``SECTION.FIELD``), as `resolve` takes them."""
    return {name: value for name, value in vars(args).items() if "." in name}
