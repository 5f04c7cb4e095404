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


def object_fusion_options(parser) -> None:
    """``--object-fusion W`` and ``--object-weights`` (object-guided localization) of evaluate and localize."""
    parser.add_argument("--object-fusion", type=float, metavar="W",
                        help="object-guided localization (OGL): blend each min-max normalised map with an "
                        "object-saliency map of a pre-trained image trunk, (1 - W) * map + W * saliency; 0 = off "
                        "(default: the checkpoint's, 0); 0.6 is EZ-VSL's and FNAC's test-time OGL (their alpha 0.4), "
                        "0.1 SLAVC's (alpha 0.9)")
    parser.add_argument("--object-weights", metavar="FILE",
                        help="the saliency trunk's weights: a file of hearflow.synthetic.pretrain encoder weights "
                        "(default: torchvision's ImageNet ResNet-18 from its cache, never downloaded)")
