"""Inference backends: the model's maps from input tensors, run by torch or by ONNX Runtime.

A backend is made for one model and its inference options (`make_backend`) and has
one method, ``maps(image, flow, spectrogram) -> float32 N x h x w`` (CPU tensor), the
own-pair similarity maps `HTF.forward` gives (``.similarity``); `hearflow localize` and
`hearflow evaluate` run every batch through one (``--backend``).

- ``torch``: the model itself, eval mode, no autograd; on the CPU its weights and inputs
  are channels-last (oneDNN's faster layout for convolutions: the same values, about
  2x faster here); ``precision="bfloat16"`` runs it under CPU autocast (fast where the
  CPU has AVX512-BF16 or AMX, and then refused elsewhere with a fallback to float32).
- ``onnx``: the model exported to ONNX (`export_onnx`, in memory) and run by ONNX
  Runtime (the optional extra ``pip install hearflow[onnx]``), float32.
- ``openvino``: the same graph compiled by OpenVINO for the CPU (the optional extra
  ``pip install hearflow[openvino]``), float32 (its precision hint pinned: on CPUs
  with AMX it would otherwise run in bfloat16).
- ``auto``: ``onnx`` on the CPU in float32 when ONNX Runtime is installed, else
  ``openvino`` when it is, else ``torch`` (OpenVINO was not consistently faster than ONNX
  Runtime end to end, bench/README.md).

Object fusion (OGL, ``object_fusion > 0``) wraps either backend (`ObjectFused`): the
object-saliency trunk runs in torch beside it and the maps are blended after, outside
any exported graph (`export_checkpoint` refuses a checkpoint that records it).

An unavailable choice falls back to ``torch`` with one warning, never silently.
`export_onnx` is also `hearflow export`: a deployable file whose metadata holds the
config (the preprocessing every input must follow) and the inference options.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearflow.errors import HearflowError
from hearflow.model.saliency import fuse_object_saliency, object_saliency

BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("float32", "bfloat16")
ONNX_OPSET = 17
ONNX_EXTRA = "pip install 'hearflow[onnx]' (onnx and onnxruntime)"
OPENVINO_EXTRA = "pip install 'hearflow[openvino]' (onnx and openvino)"


def onnx_available() -> bool:
    """Whether the optional ONNX packages (onnx, onnxruntime) can be imported."""
    return _importable("onnx", "onnxruntime")


def openvino_available() -> bool:
    """Whether the optional OpenVINO packages (onnx, openvino) can be imported."""
    return _importable("onnx", "openvino")


def _importable(*modules: str) -> bool:
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def bfloat16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX, as oneDNN sees it)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class TorchBackend:
    """The model run by torch (module docstring). ``uses_flow`` False: the flow is not passed."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, flow_fusion: float, uses_flow: bool,
                 precision: str = "float32") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.flow_fusion, self.uses_flow, self.precision = float(flow_fusion), uses_flow, precision
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def maps(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> torch.Tensor:
        """Own-pair maps, float32 N x h x w on the CPU, of a batch of inputs (`HTF.forward`'s)."""
        inputs = [None if tensor is None else self._placed(tensor) for tensor in (image, flow, spectrogram)]
        if not self.uses_flow:
            inputs[1] = None
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bfloat16"
                    else contextlib.nullcontext())
        with autocast:
            output = self.model(*inputs, flow_fusion=self.flow_fusion)
        return output.similarity.float().cpu()

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last else tensor


class _Forward(torch.nn.Module):
    """The exported graph: (image, [flow,] spectrogram) -> similarity, inference options fixed."""

    def __init__(self, model: torch.nn.Module, flow_fusion: float, uses_flow: bool) -> None:
        super().__init__()
        self.model, self.flow_fusion, self.uses_flow = model, flow_fusion, uses_flow

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        image, flow, spectrogram = inputs if self.uses_flow else (inputs[0], None, inputs[1])
        return self.model(image, flow, spectrogram, flow_fusion=self.flow_fusion).similarity


def input_names(uses_flow: bool) -> list[str]:
    """The exported graph's inputs, in order."""
    return ["image", "flow", "spectrogram"] if uses_flow else ["image", "spectrogram"]


def example_inputs(config, batch: int = 1) -> dict[str, torch.Tensor]:
    """Zero tensors of the model's input shapes: image 3 x S x S, flow 2 x S x S, spectrogram 1 x F x T."""
    from hearflow.data.transforms import audio_window_length

    data = config.data
    size = data.image_size
    columns = (audio_window_length(data) - data.noverlap) // (data.nperseg - data.noverlap)
    return {"image": torch.zeros(batch, 3, size, size), "flow": torch.zeros(batch, 2, size, size),
            "spectrogram": torch.zeros(batch, 1, data.nperseg // 2 + 1, columns)}


def export_onnx(model: torch.nn.Module, flow_fusion: float = 0.0, metadata: dict[str, Any] | None = None) -> bytes:
    """The model's forward as an ONNX graph (bytes), float32, any batch size.

    Inputs ``image`` B x 3 x S x S, ``flow`` B x 2 x S x S (absent when the model does not
    use it: no flow prior and no flow fusion) and ``spectrogram`` B x 1 x F x T, made by
    `hearflow.data.transforms.sample_tensors` with the model's config; output
    ``similarity`` B x h x w. ``flow_fusion`` is fixed in the graph. ``metadata``: string
    entries of the file's metadata (values that are not strings are stored as JSON).
    The model is left in eval mode.
    """
    onnx = _import_onnx()
    uses_flow = model.config.model.prior != "none" or flow_fusion > 0
    names = input_names(uses_flow)
    examples = example_inputs(model.config, batch=2)
    wrapper = _Forward(model.eval(), float(flow_fusion), uses_flow).eval()  # the exporter restores these modes
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(wrapper, tuple(examples[name] for name in names), buffer, dynamo=False,
                          input_names=names, output_names=["similarity"], opset_version=ONNX_OPSET,
                          dynamic_axes={name: {0: "batch"} for name in [*names, "similarity"]})
    model.eval()
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return graph.SerializeToString()


class OnnxBackend:
    """The model exported to ONNX (`export_onnx`) and run by ONNX Runtime's CPU provider, float32."""

    name = "onnx"

    def __init__(self, model: torch.nn.Module, flow_fusion: float, uses_flow: bool, threads: int | None = None) -> None:
        import onnxruntime

        self.uses_flow = uses_flow
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle pool threads sleep instead of spinning: the cores are shared with the threads
        # making the inputs and writing the overlay (bench/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = export_onnx(model, flow_fusion if uses_flow else 0.0)
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.names = [entry.name for entry in self.session.get_inputs()]

    def maps(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> torch.Tensor:
        """Own-pair maps, float32 N x h x w on the CPU, of a batch of inputs (`HTF.forward`'s)."""
        feed = dict(zip(self.names, _graph_inputs(self.names, image, flow, spectrogram)))
        return torch.from_numpy(self.session.run(["similarity"], feed)[0])


def _graph_inputs(names: list[str], image: torch.Tensor, flow: torch.Tensor | None,
                  spectrogram: torch.Tensor) -> list[np.ndarray]:
    """The exported graph's inputs ``names`` (`input_names`), in order, as contiguous float32 arrays."""
    given = {"image": image, "flow": flow, "spectrogram": spectrogram}
    return [np.ascontiguousarray(given[name].detach().cpu().numpy(), dtype=np.float32) for name in names]


class OpenVinoBackend:
    """The model exported to ONNX (`export_onnx`) and compiled by OpenVINO for the CPU, float32."""

    name = "openvino"

    def __init__(self, model: torch.nn.Module, flow_fusion: float, uses_flow: bool, threads: int | None = None) -> None:
        import openvino

        core = openvino.Core()
        graph = core.read_model(model=export_onnx(model, flow_fusion if uses_flow else 0.0), weights=b"")
        self.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_NUM_THREADS": str(int(threads or torch.get_num_threads())),
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            # its threads stay unpinned: the cores are shared with the threads making the inputs
            "ENABLE_CPU_PINNING": "NO"})
        self.names = input_names(uses_flow)  # the graph's inputs, in its order (a port may carry other names too)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one request: calls from several threads (hearflow serve) take turns

    def maps(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> torch.Tensor:
        """Own-pair maps, float32 N x h x w on the CPU, of a batch of inputs (`HTF.forward`'s)."""
        feed = dict(enumerate(_graph_inputs(self.names, image, flow, spectrogram)))
        with self.lock:
            result = self.request.infer(feed)
            return torch.from_numpy(np.array(result[self.compiled.outputs[0]], dtype=np.float32))


class ObjectFused:
    """A backend whose maps are blended with object saliency (OGL) after it ran, outside its graph:
    `hearflow.model.saliency.fuse_object_saliency` of the inner backend's maps and a saliency trunk's."""

    def __init__(self, inner, saliency: torch.nn.Module, weight: float, device: torch.device) -> None:
        self.inner, self.weight, self.device = inner, float(weight), torch.device(device)
        self.saliency = saliency.to(self.device)
        self.name, self.precision = inner.name, getattr(inner, "precision", "float32")

    @torch.no_grad()
    def maps(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> torch.Tensor:
        """The inner backend's maps fused with the images' object saliency: float32 N x h x w in [0, 1]."""
        maps = self.inner.maps(image, flow, spectrogram)
        objects = self.saliency(image.to(self.device, torch.float32)).float().cpu()
        return torch.from_numpy(fuse_object_saliency(maps.numpy(), objects.numpy(), self.weight))


def make_backend(name: str, model: torch.nn.Module, device: torch.device, flow_fusion: float = 0.0,
                 precision: str = "float32", object_fusion: float = 0.0, object_weights: str = "imagenet"):
    """The backend ``name`` (`BACKENDS`) for ``model`` on ``device`` with late fusion ``flow_fusion``,
    wrapped in `ObjectFused` when ``object_fusion`` > 0 (saliency trunk: ``object_weights``).

    Falls back to ``torch`` with a warning when the choice cannot run here: ``onnx`` or
    ``openvino`` without its packages or off the CPU or with bfloat16, bfloat16 on a CPU
    without native support (float32 then).
    """
    if name not in BACKENDS:
        raise HearflowError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise HearflowError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if object_fusion > 0:
        m = model.config.model
        saliency = object_saliency(object_weights, m.width, m.map_stride)
        inner = make_backend(name, model, device, flow_fusion, precision)
        return ObjectFused(inner, saliency, object_fusion, device)
    uses_flow = model.config.model.prior != "none" or flow_fusion > 0
    if precision == "bfloat16" and device.type == "cpu" and not bfloat16_supported():
        _warn("this CPU has no native bfloat16 (AVX512-BF16 or AMX): running in float32")
        precision = "float32"
    exported = {"onnx": (onnx_available, OnnxBackend, "ONNX Runtime", ONNX_EXTRA),  # auto's order
                "openvino": (openvino_available, OpenVinoBackend, "OpenVINO", OPENVINO_EXTRA)}
    if name == "auto":
        usable = [choice for choice, (available, *_) in exported.items() if available()]
        name = usable[0] if device.type == "cpu" and precision == "float32" and usable else "torch"
    if name in exported:
        available, backend, label, extra = exported[name]
        problem = (f"{label} is not installed: {extra}" if not available()
                   else f"the {name} backend runs on the CPU only" if device.type != "cpu"
                   else f"the {name} backend runs in float32 only" if precision != "float32" else None)
        if problem is None:
            return backend(model, flow_fusion, uses_flow)
        _warn(f"{problem}; using the torch backend")
    return TorchBackend(model, device, flow_fusion, uses_flow, precision)


def export_checkpoint(checkpoint: str | Path, out: str | Path, flow_fusion: float | None = None) -> dict[str, Any]:
    """`hearflow export`: a checkpoint's model as an ONNX file at ``out`` (atomic); returns its summary.

    The file's metadata holds ``hearflow_config`` (the whole config as JSON: the
    preprocessing of its inputs), ``hearflow_inference`` (the options fixed in the
    graph) and ``hearflow_version``. flow_fusion: None takes the checkpoint's default.
    """
    from hearflow import __version__
    from hearflow.hub import load_model
    from hearflow.io import write_atomic

    model, recorded = load_model(checkpoint)
    options = recorded.with_arguments(flow_fusion=flow_fusion)
    if options.object_fusion > 0:
        raise HearflowError(f"{checkpoint} records object fusion {options.object_fusion:g}, which runs outside the "
                            "model (a second image trunk), not in an exported graph: export it from a checkpoint "
                            "without it and blend with hearflow.model.saliency.fuse_object_saliency")
    graph = export_onnx(model, options.flow_fusion, {
        "hearflow_config": model.config.to_dict(), "hearflow_inference": {"flow_fusion": options.flow_fusion},
        "hearflow_version": __version__, "hearflow_checkpoint": str(checkpoint)})
    write_atomic(Path(out), graph)
    uses_flow = model.config.model.prior != "none" or options.flow_fusion > 0
    shapes = {name: list(tensor.shape[1:]) for name, tensor in example_inputs(model.config).items()
              if name in input_names(uses_flow)}
    cells = model.config.data.image_size // model.config.model.map_stride
    return {"path": str(out), "bytes": len(graph), "inputs": shapes, "similarity": [cells, cells],
            "flow_fusion": options.flow_fusion}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise HearflowError(f"exporting to ONNX needs the onnx package: {ONNX_EXTRA}") from None
    return onnx


_warned: set[str] = set()


def _warn(message: str) -> None:
    """One line on stderr, once per process and message."""
    import sys

    if message not in _warned:
        _warned.add(message)
        print(f"hearflow: warning: {message}", file=sys.stderr)
