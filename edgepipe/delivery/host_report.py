"""Stage 7 on the build host: int8 vs FP32 measured where the build runs, before any device.

arm-cpu runs the bundle's own run.py here (the real LiteRT kernels); targets whose runtime is not
here emulate their deployed model (`Target.deployed_probe`: the Q/DQ ONNX in ONNX Runtime) and say
so in results.json. Both end in one accuracy warning when int8 agrees poorly, and report.html.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from edgepipe import graph
from edgepipe.errors import UserError


def run_host_report(out: Path, settings: dict, target, result) -> dict:
    """Run the bundle's own run.py with this Python (marked 'host'), then render the report."""
    threads = settings["backend"].get("threads") or target.options.get("threads") or 2
    out = out.resolve()
    command = [sys.executable, str(out / "run.py"), "--where", "host",
               "--iterations", str(settings["report"].iterations),
               "--warmup", str(settings["report"].warmup), "--threads", str(threads)]
    completed = subprocess.run(command, cwd=str(out), capture_output=True, text=True)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{out / 'run.py'} failed on this host: {last}")
    from edgepipe.delivery.regress import load_results

    results = load_results(out / "report" / "results.json", "host")
    return finish_host_report(out, settings, results, result)


def run_host_emulation(out: Path, settings: dict, target, result) -> dict | None:
    """Targets whose runtime is not here (TensorRT): their deployed model emulated on this host
    (`Target.deployed_probe`: the Q/DQ ONNX in ONNX Runtime), marked so in results.json."""
    from edgepipe.accuracy.compare import host_accuracy

    manifest = json.loads((out / "manifest.json").read_text())
    outputs = [entry["name"] for entry in graph.describe_io(graph.load_model(out / "reference.onnx"))["outputs"]]
    probe = target.deployed_probe(out, manifest, outputs)
    if probe is None:
        return None
    where, model_file = probe.where, probe.description
    accuracy = host_accuracy(out, probe)
    import onnxruntime

    results = {"schema": 1, "target": target.name, "where": where, "model": model_file,
               "device": {"runtime": f"onnxruntime {onnxruntime.__version__}", "machine": platform.machine(),
                          "python": platform.python_version()},
               "accuracy": accuracy, "latency_ms": {},
               "samples": min((manifest.get("eval") or {}).get("samples") or 0,
                              settings["report"].eval_limit or 10**9),
               "source_sha256": (manifest.get("source") or {}).get("sha256")}
    return finish_host_report(out, settings, results, result)


def finish_host_report(out: Path, settings: dict, results: dict, result) -> dict:
    """One warning when int8 agrees poorly with FP32 (report.min_sqnr_db / min_agreement), written
    into results.json and the report; then report.html."""
    from edgepipe.accuracy.compare import accuracy_warning
    from edgepipe.delivery.report import render_report

    warning = accuracy_warning(results.get("accuracy"), settings["report"], out, str(results.get("where")))
    results["accuracy_warnings"] = [warning] if warning else []
    if warning:
        result.warnings.append(warning)
    if (out / "precision.json").is_file():  # what precision.budget bought and what its search cost
        from edgepipe.accuracy.precision import plan_summary

        results["precision"] = plan_summary(json.loads((out / "precision.json").read_text()))
    results_path = out / "report" / "results.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    html = render_report(results_path, out_dir=out / "report", bundle_dir=out)
    result.results = results
    result.report_html = Path(html) if html else None
    return results
