"""int8 vs fp32 .tflite latency and size (LiteRT, this host), and conversion time of a large CNN.

Measures, for the demo CNN and a larger MobileNet-like CNN: latency of model.tflite (int8) and
model.fp32.tflite under XNNPACK (default resolver) and builtin kernels without delegates, with 1
and 2 threads, the two files timed in alternating rounds (benchmarks/timing.py: median over at
least 3 rounds of each round's median, with the spread of the round medians), so the int8/fp32
ratio comes from one run; file size ratio; `build_tflite` time (median of 3) for both and for a
~25 M-parameter VGG-style CNN (goal < 30 s). Host numbers, not device numbers: the CPU features
and the load average before and after each model are stored with them.
Prints a table, writes benchmarks/results/tflite_latency.json.

    python benchmarks/tflite_latency.py [--quick] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepipe.backends.tflite import build_tflite  # noqa: E402
from edgepipe.fold.batchnorm import fold_batchnorm  # noqa: E402
from edgepipe.stages.export import export_torch  # noqa: E402
from edgepipe.stages.simplify import run_simplify  # noqa: E402
from benchmarks.timing import (alternating_rounds, host_record, load_average, repeated_seconds,  # noqa: E402
                               rounds_argument)
from tests.tflite_harness import make_interpreter, minmax_calibration, structured_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tflite_latency.json"


def _torch_cnn(kind: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "demo":
        from edgepipe.demo.model import build_demo

        return build_demo(), [1, 3, 32, 32]

    def block(cin, cout, stride, depthwise=False):
        if depthwise:
            return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                    nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish()]
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    if kind == "mobilenet-like":
        layers = block(3, 32, 2) + block(32, 64, 1, True) + block(64, 128, 2, True) + block(128, 128, 1, True) \
            + block(128, 256, 2, True) + block(256, 256, 1, True) + block(256, 512, 2, True)
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
        return _settle_batchnorm(nn.Sequential(*layers, *head), [1, 3, 160, 160]), [1, 3, 160, 160]
    # vgg-like, ~25 M parameters
    layers = block(3, 64, 1) + block(64, 128, 2) + block(128, 256, 2) + block(256, 512, 2)
    for _ in range(8):
        layers += block(512, 512, 1)
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 1000)]
    return _settle_batchnorm(nn.Sequential(*layers, *head), [1, 3, 64, 64]), [1, 3, 64, 64]


def _settle_batchnorm(module, shape):
    """BatchNorm running statistics from a few random batches, so activations keep roughly unit
    scale through the net as in a trained model (with the default statistics of an untrained net
    they shrink layer after layer and deep int8 ranges become degenerate)."""
    import torch

    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(8, *shape[1:]))
    return module.eval()


def onnx_cnn(kind: str):
    module, shape = _torch_cnn(kind)
    params = sum(p.numel() for p in module.parameters())
    model = fold_batchnorm(run_simplify(export_torch(module, {"image": shape}, ["logits"], 17), check=False)[0])[0]
    return model, params


def fed_interpreter(path: Path, resolver: str, threads: int):
    interpreter = make_interpreter(path, resolver, threads)
    detail = interpreter.get_input_details()[0]
    data = np.random.default_rng(0).normal(size=detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], data)
    return interpreter


def bench_latency(kind: str, out_dir: Path, rounds: int, iterations: int) -> dict:
    load_start = load_average()
    model, params = onnx_cnn(kind)
    calibration = minmax_calibration(model, structured_inputs(model, 8))
    convert = repeated_seconds(lambda: build_tflite(model, calibration, out_dir, {}))
    int8_path, fp32_path = out_dir / "model.tflite", out_dir / "model.fp32.tflite"
    row = {"model": kind, "params": params, "convert_s": convert["median"], "convert_runs_s": convert["runs"],
           "size_int8": int8_path.stat().st_size, "size_fp32": fp32_path.stat().st_size,
           "rounds": rounds, "iterations_per_round": iterations}
    row["size_ratio"] = round(row["size_int8"] / row["size_fp32"], 3)
    row["latency_ms"] = {}
    for resolver in ("xnnpack", "no_delegates"):
        for threads in (1, 2):
            pair = {"int8": fed_interpreter(int8_path, resolver, threads).invoke,
                    "fp32": fed_interpreter(fp32_path, resolver, threads).invoke}
            timed = alternating_rounds(pair, rounds, iterations)
            int8, fp32 = timed["int8"], timed["fp32"]
            round_ratios = [a / b for a, b in zip(int8["round_ms"], fp32["round_ms"])]
            row["latency_ms"][f"{resolver}/t{threads}"] = {
                "int8": round(int8["ms"], 4), "fp32": round(fp32["ms"], 4),
                "int8_over_fp32": round(int8["ms"] / fp32["ms"], 3),
                "int8_spread": int8["spread"], "fp32_spread": fp32["spread"],
                "round_ratio_range": [round(min(round_ratios), 3), round(max(round_ratios), 3)]}
    row["loadavg"] = {"start": load_start, "end": load_average()}
    return row


def bench_conversion(out_dir: Path) -> dict:
    start = time.perf_counter()
    model, params = onnx_cnn("vgg-like")
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    calibrate_s = time.perf_counter() - start
    convert = repeated_seconds(lambda: build_tflite(model, calibration, out_dir, {}))
    files = sorted(path.name for path in out_dir.glob("*.tflite"))
    return {"model": "vgg-like", "params": params, "export_s": round(export_s, 2),
            "minmax_calibration_s": round(calibrate_s, 2), "build_tflite_s": round(convert["median"], 2),
            "build_tflite_runs_s": convert["runs"], "build_tflite_spread": convert["spread"],
            "goal_s": 30, "files": {f: (out_dir / f).stat().st_size for f in files}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer invocations per round")
    parser.add_argument("--rounds", type=rounds_argument, default=5,
                        help="alternating int8/fp32 rounds (median reported), >= 3")
    args = parser.parse_args()
    iterations = 10 if args.quick else 40  # per round; the MobileNet-like model gets a quarter
    host = host_record()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [bench_latency(kind, tmp / kind, args.rounds, iterations if kind == "demo" else max(iterations // 4, 3))
                for kind in ("demo", "mobilenet-like")]
        conversion = bench_conversion(tmp / "vgg")
    import ai_edge_litert

    report = {"host": host, "litert": getattr(ai_edge_litert, "__version__", "?"), "loadavg_end": load_average(),
              "note": "host numbers, not device numbers; latency = median over alternating int8/fp32 rounds of "
                      "each round's median, ratios from the same rounds",
              "latency": rows, "conversion": conversion}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'model':16} {'params':>9} {'size i8/f32':>11} {'resolver/threads':>18} {'int8 ms':>9} {'fp32 ms':>9} {'ratio':>7}")
    for row in rows:
        for key, value in row["latency_ms"].items():
            print(f"{row['model']:16} {row['params']:>9} {row['size_ratio']:>11} {key:>18} {value['int8']:>9} "
                  f"{value['fp32']:>9} {value['int8_over_fp32']:>7}")
    print(f"conversion: {conversion['model']} {conversion['params'] / 1e6:.1f} M params: build_tflite "
          f"{conversion['build_tflite_s']} s (goal < 30 s); export {conversion['export_s']} s, "
          f"min/max calibration {conversion['minmax_calibration_s']} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
