"""The model's float32 forward per inference engine, in the same run: torch, ONNX Runtime, OpenVINO.

What `hearflow localize` could run its model with on the CPU: the ``htf`` model (random
weights) through `hearflow.backends.TorchBackend` (channels-last) and `OnnxBackend`, and
the same exported graph (`export_onnx`) compiled by OpenVINO with
``INFERENCE_PRECISION_HINT=f32`` (OpenVINO would otherwise run bfloat16 where the CPU has
it). One random batch, ``--threads`` threads each, calls interleaved over ``--rounds``;
prints ms per frame (median and best) and the ratio of medians to ONNX Runtime's, the
default CPU backend, and each engine's largest difference from torch's maps.

    python3 bench/engines.py                 # batch 8, 2 threads, 5 rounds
    pip install openvino                     # the OpenVINO row is skipped without it
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hearflow.backends import OnnxBackend, TorchBackend, example_inputs, export_onnx
from hearflow.config import preset_config
from hearflow.model import build_model


def openvino_maps(model: torch.nn.Module, threads: int):
    """A maps(image, flow, spectrogram) function running ``model``'s ONNX graph in OpenVINO, or None."""
    try:
        import openvino
    except ImportError:
        return None
    core = openvino.Core()
    graph = core.read_model(model=export_onnx(model), weights=b"")
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": str(threads),
                                                 "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    names = [entry.get_any_name() for entry in compiled.inputs]

    def maps(image, flow, spectrogram):
        given = {"image": image, "flow": flow, "spectrogram": spectrogram}
        result = request.infer({name: given[name].numpy() for name in names})
        return torch.from_numpy(next(iter(result.values())).copy())

    return maps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="frames per call (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved calls per engine (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = preset_config("htf")
    model = build_model(config=config).eval()
    inputs = [torch.randn_like(tensor) for tensor in example_inputs(config, batch=args.batch).values()]
    engines = {"onnxruntime": OnnxBackend(model, 0.0, True, threads=args.threads).maps}
    openvino = openvino_maps(model, args.threads)
    if openvino is None:
        print("openvino is not installed (pip install openvino): its row is skipped")
    else:
        engines["openvino"] = openvino
    engines["torch"] = TorchBackend(model, "cpu", 0.0, True).maps
    reference = engines["torch"](*inputs)
    times = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, maps in engines.items():
            start = time.perf_counter()
            maps(*inputs)
            times[name].append((time.perf_counter() - start) / args.batch * 1000)
    base = statistics.median(times["onnxruntime"])
    print(f"htf forward, float32, batch {args.batch}, {args.threads} threads, {args.rounds} rounds (ms per frame):")
    for name, maps in engines.items():
        median = statistics.median(times[name])
        difference = float((maps(*inputs) - reference).abs().max())
        print(f"  {name:12s} median {median:6.1f}  best {min(times[name]):6.1f}  "
              f"ratio to onnxruntime {median / base:4.2f}x  max |maps - torch's| {difference:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
