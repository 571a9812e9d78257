"""ARM CPU speed on this host: XNNPACK partitions, TRANSPOSE count and int8 / fp32 latency.

Why: int8 only pays when the whole graph runs in XNNPACK (one partition, nothing on the builtin
kernels but the input QUANTIZE and output DEQUANTIZE), when layout propagation adds no TRANSPOSE
the ONNX graph did not have, and on CPUs with int8 dot-product instructions (x86 VNNI, ARM
asimddp). This measures all three per model and records the host's CPU features with them.

Per model, the user's path: `edgepipe build --model MODEL --target arm-cpu --calib calib.npz
--no-host-report --json` on the file as shipped (ONNX from a PyPI wheel, benchmarks/real_models.py)
or a `module:factory` (small torch models of the common families). Then, in LiteRT (XNNPACK):
partitions and ops outside them (edgepipe.backends.tflite.delegation, as the build line), the
.tflite's TRANSPOSE count next to the shipped ONNX graph's Transpose count, and int8 and fp32
latency with 1 and 4 threads, timed in alternating rounds (median over rounds of the round's
median), so the int8/fp32 ratio comes from one run. Calibration inputs are random normal: this
measures speed and delegation, not accuracy (benchmarks/tflite_real_models.py does accuracy).

    python benchmarks/arm_speed.py [--models a,b] [--rounds 5] [--iterations 10]

Writes benchmarks/results/arm_speed.json; `python benchmarks/summarize.py` prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import real_models  # noqa: E402
from edgepipe.backends.tflite import delegation  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "arm_speed.json"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
# name -> (model spec for --model, input name, static shape, what it stands for)
FACTORIES = {
    "demo_cnn": ("edgepipe.demo.model:build_demo", "image", (1, 3, 32, 32), "edgepipe's demo CNN"),
    "mobilenet_like": ("arm_speed:mobilenet_like", "image", (1, 3, 128, 128),
                       "depthwise-separable CNN, hardswish / hardsigmoid SE, grouped conv"),
    "pnet_like": ("arm_speed:pnet_like", "image", (1, 3, 96, 96),
                  "face detector first stage (conv + PReLU + max pool, two heads)"),
    "vit_like": ("arm_speed:vit_like", "image", (1, 3, 32, 32),
                 "patch conv + two timm-style attention blocks"),
}
WHEEL_MODELS = ("ocr_cls", "ocr_rec", "ocr_det")


def vit_like():
    from tests.fixture_models import build_vit_like

    return build_vit_like()


def mobilenet_like():
    import torch
    from torch import nn

    torch.manual_seed(0)

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x):
            scale = x.mean((2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(scale))))

    def block(cin, cout, stride, groups=1):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.Hardswish(),
                SqueezeExcite(cin), nn.Conv2d(cin, cout, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.Hardswish()]

    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
    layers += block(16, 32, 2) + block(32, 64, 2, groups=2) + block(64, 96, 2, groups=4) + block(96, 128, 1)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 128, 128))
    return model.eval()


def pnet_like():
    import torch
    from torch import nn

    torch.manual_seed(0)

    class PNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=False),
                                      nn.Conv2d(10, 16, 3), nn.PReLU(16), nn.Conv2d(16, 32, 3), nn.PReLU(32))
            self.score, self.box = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)
            with torch.no_grad():
                for prelu in (m for m in self.body if isinstance(m, nn.PReLU)):
                    prelu.weight.uniform_(0.05, 0.4)

        def forward(self, x):
            features = self.body(x)
            return torch.softmax(self.score(features), 1), self.box(features)

    return PNet().eval()


def cpu_features() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
        if key.strip() in ("model name", "Model name") and not model:
            model = value.strip()
    dot_product = bool({"avx512_vnni", "avx_vnni", "asimddp"} & flags)
    cores = sum(line.startswith("processor") for line in text.splitlines())
    return {"machine": platform.machine(), "cpu": model, "flags": {f: f in flags for f in CPU_FLAGS},
            "int8_dot_product": dot_product, "cores": cores}


def onnx_transposes(path: Path) -> int:
    return sum(node.op_type == "Transpose" for node in onnx.load(str(path)).graph.node)


def tflite_transposes(path: Path) -> int:
    return [op["op_name"] for op in make_interpreter(path, "no_delegates")._get_ops_details()].count("TRANSPOSE")


def build(model: str, input_name: str, shape, work: Path, name: str) -> tuple[Path | None, dict]:
    calib = work / f"{name}_calib.npz"
    np.savez(calib, **{input_name: np.random.default_rng(0).standard_normal((8, *shape[1:])).astype(np.float32)})
    out = work / name
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--model", model, "--target", "arm-cpu",
                           "--calib", str(calib), "--input-shape", f"{input_name}:{'x'.join(map(str, shape))}",
                           "--no-host-report", "--json", "--out", str(out)],
                          cwd=Path(__file__).resolve().parent,  # module:factory specs import arm_speed.py
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["failed"]
        return None, {"error": lines[-1][:400], "build_s": round(wall, 2)}
    return out, {"build_s": round(wall, 2)}


def feed_for(interpreter) -> None:
    rng = np.random.default_rng(1)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(detail["dtype"]))


def timed_pair(paths: list[Path], threads: int, rounds: int, iterations: int) -> list[float]:
    """Median over `rounds` of each model's median latency (ms) in that round; models alternate."""
    interpreters = [make_interpreter(path, "xnnpack", threads) for path in paths]
    for interpreter in interpreters:
        feed_for(interpreter)
        for _ in range(3):
            interpreter.invoke()
    per_round: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for interpreter, medians in zip(interpreters, per_round):
            samples = []
            for _ in range(iterations):
                start = time.perf_counter()
                interpreter.invoke()
                samples.append((time.perf_counter() - start) * 1000.0)
            medians.append(statistics.median(samples))
    return [statistics.median(medians) for medians in per_round]


def measure(bundle: Path, onnx_path: Path, rounds: int, iterations: int) -> dict:
    int8, fp32 = bundle / "model.tflite", bundle / "model.fp32.tflite"
    row = {"int8": delegation.measure(int8), "fp32": delegation.measure(fp32),
           "tflite_transposes": tflite_transposes(int8), "onnx_transposes": onnx_transposes(onnx_path),
           "latency_ms": {}}
    for threads in (1, 4):
        int8_ms, fp32_ms = timed_pair([int8, fp32], threads, rounds, iterations)
        row["latency_ms"][str(threads)] = {"int8": round(int8_ms, 4), "fp32": round(fp32_ms, 4),
                                           "int8_over_fp32": round(int8_ms / fp32_ms, 3)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*FACTORIES, *WHEEL_MODELS]))
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    parser.add_argument("--iterations", type=int, default=10, help="invocations per round")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="arm-speed-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            if name in FACTORIES:
                spec, input_name, shape, description = FACTORIES[name]
                source = spec
            else:
                meta = real_models.MODELS[name]
                spec, input_name, shape, description = str(real_models.raw_model_path(name)), "x", meta.shape, \
                    meta.description
                source = f"{meta.package}: {meta.member}"
            bundle, row = build(spec, input_name, shape, work, name)
            row.update(source=source, description=description, shape=list(shape))
            if bundle is not None:
                onnx_path = Path(spec) if name not in FACTORIES else bundle / "reference.onnx"
                row.update(measure(bundle, onnx_path, args.rounds, args.iterations))
            rows[name] = row
            print(name, json.dumps({k: row.get(k) for k in ("int8", "tflite_transposes", "onnx_transposes",
                                                              "latency_ms", "error")}), flush=True)
    import ai_edge_litert

    result = {"host": cpu_features(), "litert": getattr(ai_edge_litert, "__version__", "?"),
              "rounds": args.rounds, "iterations": args.iterations, "models": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
