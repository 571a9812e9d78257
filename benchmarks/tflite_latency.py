"""int8 vs fp32 .tflite latency and size (LiteRT, this host), and conversion time of a large CNN.

Measures, for the demo CNN and a larger MobileNet-like CNN: median latency of model.tflite (int8)
and model.fp32.tflite under XNNPACK (default resolver) and builtin kernels without delegates, with
1 and 2 threads, and the int8/fp32 ratios measured in the same run; file size ratio; and the
time `build_tflite` takes for a ~25 M-parameter VGG-style CNN (goal < 30 s). Host numbers (x86),
not device numbers. Prints a table, writes benchmarks/results/tflite_latency.json.

    python benchmarks/tflite_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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


def median_ms(path: Path, resolver: str, threads: int, iterations: int) -> float:
    interpreter = make_interpreter(path, resolver, threads)
    detail = interpreter.get_input_details()[0]
    data = np.random.default_rng(0).normal(size=detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], data)
    for _ in range(max(3, iterations // 10)):
        interpreter.invoke()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_latency(kind: str, out_dir: Path, iterations: int) -> dict:
    model, params = onnx_cnn(kind)
    calibration = minmax_calibration(model, structured_inputs(model, 8))
    start = time.perf_counter()
    build_tflite(model, calibration, out_dir, {})
    convert_s = time.perf_counter() - start
    int8_path, fp32_path = out_dir / "model.tflite", out_dir / "model.fp32.tflite"
    row = {"model": kind, "params": params, "convert_s": round(convert_s, 3),
           "size_int8": int8_path.stat().st_size, "size_fp32": fp32_path.stat().st_size}
    row["size_ratio"] = round(row["size_int8"] / row["size_fp32"], 3)
    row["latency_ms"] = {}
    for resolver in ("xnnpack", "no_delegates"):
        for threads in (1, 2):
            int8_ms = median_ms(int8_path, resolver, threads, iterations)
            fp32_ms = median_ms(fp32_path, resolver, threads, iterations)
            row["latency_ms"][f"{resolver}/t{threads}"] = {
                "int8": round(int8_ms, 3), "fp32": round(fp32_ms, 3), "int8_over_fp32": round(int8_ms / fp32_ms, 3)}
    return row


def bench_conversion(out_dir: Path) -> dict:
    start = time.perf_counter()
    model, params = onnx_cnn("vgg-like")
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    result = build_tflite(model, calibration, out_dir, {})
    convert_s = time.perf_counter() - start
    return {"model": "vgg-like", "params": params, "export_s": round(export_s, 2),
            "minmax_calibration_s": round(calibrate_s, 2), "build_tflite_s": round(convert_s, 2),
            "goal_s": 30, "files": {f: (out_dir / f).stat().st_size for f in result["files"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    iterations = 30 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [bench_latency(kind, tmp / kind, iterations if kind == "demo" else iterations // 4)
                for kind in ("demo", "mobilenet-like")]
        conversion = bench_conversion(tmp / "vgg")
    report = {"host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()},
              "note": "host (x86) numbers; ratios are int8/fp32 measured in the same run",
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
