"""hearflow: where in the frame does the sound come from? (Hear The Flow, WACV 2023)

The public API is small:

- ``build_model(preset="htf", pretrained=False, **overrides)``: a fresh model;
- ``load(path)``: a model from a hearflow or released checkpoint, a Hub folder or
  ``hf://USER/REPO[@REVISION]``, in eval mode;
- ``from_pretrained(source)`` / ``save_pretrained(checkpoint_or_model, folder)``: models
  on the Hugging Face Hub (safetensors + JSON + a model card; ``pip install "hearflow[hub]"``);
- ``Localizer``: heatmaps of the sound source for any video;
- ``Config``: the configuration every model, checkpoint and run carries;
- ``HearflowError``: the one exception for problems a user can act on.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("hearflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "build_model": "hearflow.model",
    "load": "hearflow.hub",
    "from_pretrained": "hearflow.hub",
    "save_pretrained": "hearflow.hub",
    "Localizer": "hearflow.localize",
    "Config": "hearflow.config",
    "HearflowError": "hearflow.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    # Imported on first use so that `import hearflow` (and the CLI's --help, and
    # data-preparation workers) do not pay for torch until they need it.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hearflow' has no attribute {name!r}")


def __dir__():
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
