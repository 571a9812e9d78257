"""The ONNX package's own backend tests through `edgepipe build`: counts per target.

Why: the op conformance tests use graphs we wrote; the onnx wheel ships hundreds of node tests
with expected outputs computed by its numpy reference, covering attribute forms we did not think
of. Every test whose ops a target claims is built through the CLI with the test's exact shapes
and inputs and judged as in tests/onnx_node_cases.py (fp32 rtol 1e-4; int8 within a few output
steps derived from calibration.json). Each case ends matched, refused (one line, exit 2,
naming the op or input), mismatch (wrong numbers: a bug) or crashed (a bug).

Run:  python benchmarks/onnx_node_conformance.py [--suites arm-cpu,jetson,jetson-all]
Writes benchmarks/results/onnx_node_conformance.json (the README's node-suite counts; a --suites
subset keeps the other suites' last results).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import onnx_node_cases  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "onnx_node_conformance.json"


def run_target(target: str, cases: list) -> dict:
    verdicts, started = {}, time.perf_counter()
    for case in cases:
        with tempfile.TemporaryDirectory() as work:
            verdict = onnx_node_cases.run_case(case, target, Path(work))
        verdicts[f"{case.source}/{case.name}"] = {"status": verdict.status, "detail": verdict.detail}
        print(f"{target} {case.source}/{case.name}: {verdict.status} {verdict.detail[:160]}", flush=True)
    counts = collections.Counter(v["status"] for v in verdicts.values())
    return {
        "claimed_cases": len(cases),
        "built": counts["matched"] + counts["mismatch"],
        "matched": counts["matched"],
        "refused": counts["refused"],
        "mismatch": counts["mismatch"],
        "crashed": counts["crashed"],
        "seconds": round(time.perf_counter() - started, 1),
        "cases": verdicts,
    }


SUITES = {
    # name: (target, which cases)
    "arm-cpu": ("arm-cpu", "every case whose ops arm-cpu claims (the test suite's arm-cpu cases)"),
    "jetson": ("jetson", "the arm-cpu cases that jetson claims too (the test suite's jetson cases)"),
    "jetson-all": ("jetson", "every case jetson claims (its TensorRT ONNX-parser table)"),
}


def select(cases: list, suite: str) -> list:
    if suite == "jetson-all":
        return [case for case in cases if onnx_node_cases.claimed(case, "jetson")]
    return [case for case in cases if onnx_node_cases.claimed(case, "arm-cpu")
            and (suite == "arm-cpu" or onnx_node_cases.claimed(case, "jetson"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(SUITES))
    args = parser.parse_args()
    import ai_edge_litert
    import onnx
    import onnxruntime

    cases = onnx_node_cases.collect_cases()
    report = {
        "what": "onnx backend tests (node + pytorch-converted + pytorch-operator + simple) whose ops the target "
                "claims, built through `edgepipe build`, judged against the tests' expected outputs "
                "(tests/onnx_node_cases.py)",
        "tolerances": {"fp32_rtol": onnx_node_cases.FP32_RTOL, "fp32_atol": onnx_node_cases.FP32_ATOL,
                       "reference_rtol": onnx_node_cases.REFERENCE_RTOL,
                       "reference_atol": onnx_node_cases.REFERENCE_ATOL,
                       "int8_output_steps": onnx_node_cases.INT8_STEPS},
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"), "python": platform.python_version()},
        "host": {"machine": platform.machine(), "cores": os.cpu_count()},
        "all_cases": len(cases),
        "suites": {},
    }
    if RESULTS.exists():  # a --suites subset updates only those suites
        previous = json.loads(RESULTS.read_text()).get("suites", {})
        report["suites"] = {name: result for name, result in previous.items() if name not in args.suites.split(",")}
    for suite in args.suites.split(","):
        target, description = SUITES[suite]
        result = run_target(target, select(cases, suite))
        report["suites"][suite] = {"target": target, "cases_selected": description, **result}
    RESULTS.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for suite, result in report["suites"].items():
        print(f"{suite}: {result['claimed_cases']} claimed, {result['built']} built, {result['matched']} matched, "
              f"{result['refused']} refused, {result['mismatch']} mismatch, {result['crashed']} crashed "
              f"({result['seconds']} s)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
