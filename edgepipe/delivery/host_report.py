"""Stage 7 on the build host: int8 vs FP32 measured where the build runs, before any device.

arm-cpu runs the bundle's own run.py here (the real LiteRT kernels); targets whose runtime is not
here emulate their deployed model (`Target.deployed_probe`: the Q/DQ ONNX in ONNX Runtime) and say
so in results.json. Both end in one accuracy warning when int8 agrees poorly, one speed warning
when the int8 model ran slower than the FP32 model it was timed against, and report.html.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from edgepipe import graph
from edgepipe.errors import UserError

# the deployed model must be this much slower than the one timed next to it for a speed warning:
# a margin over run-to-run noise, so a model at parity on a busy host does not warn at random
SLOWER_MARGIN = 1.1


def run_host_report(out: Path, settings: dict, target, result) -> dict:
    """Run the bundle's own run.py with this Python (marked 'host'), then render the report."""
    threads = settings["backend"].get("threads") or target.options.get("threads") or 2
    out = out.resolve()
    command = [sys.executable, str(out / "run.py"), "--where", "host",
               "--iterations", str(settings["report"].iterations),
               "--warmup", str(settings["report"].warmup), "--threads", str(threads),
               "--max-seconds", repr(float(settings["report"].max_timing_s))]
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


def speed_warning(results: dict) -> str | None:
    """One line when the deployed model ran slower than the model it was timed against in the same
    run (arm-cpu: int8 vs model.fp32.tflite) by more than SLOWER_MARGIN: int8 does not pay for
    every graph (a log-mel frontend is mostly elementwise float math that int8 requantizes at every
    step), and a user reading only the int8 latency would not know. The numbers are this host's;
    the device's kernels can differ, so it recommends a measurement there rather than deciding. On
    a host that is not ARM it says the timing does not predict the board: x86 XNNPACK's int8
    depthwise kernels, and on AMX-INT8 CPUs its tile GEMMs, are slower than fp32 where arm64's
    dot-product kernels are not (benchmarks/results/arm_kernel_profile.json)."""
    speedup, compared = results.get("speedup"), results.get("compare")
    if not isinstance(speedup, (int, float)) or speedup * SLOWER_MARGIN >= 1.0 or not isinstance(compared, dict):
        return None
    model, other = results.get("model") or "the int8 model", compared.get("model") or "the fp32 model"
    p50 = (results.get("latency_ms") or {}).get("p50")
    other_p50 = (compared.get("latency_ms") or {}).get("p50")
    timing = f" (p50 {p50:.3f} vs {other_p50:.3f} ms)" if isinstance(p50, (int, float)) and \
        isinstance(other_p50, (int, float)) else ""
    machine = str((results.get("device") or {}).get("machine") or "")
    if not machine or machine.lower().startswith(ARM_MACHINES):
        return (f"speed: {model} ran {1.0 / speedup:.2f}x slower than {other} on this host{timing}: int8 does "
                f"not pay for this model here; deploy {other} (run.py --model {other}) or keep the slow part "
                "float (precision.float_nodes), after timing both on the device (run.py times both)")
    amx = " (this CPU has AMX-INT8: XNNPACK runs every int8 conv on 16x64 tiles, which narrow layers " \
        "lose)" if "amx_int8" in cpu_flags() else ""
    return (f"speed: {model} ran {1.0 / speedup:.2f}x slower than {other} on this {machine} host{timing}: "
            f"XNNPACK's {machine} int8 kernels are not an ARM board's{amx}, so this does not predict the "
            f"board; time both there (run.py times both), and only if int8 is slower there too deploy {other} "
            f"(run.py --model {other}) or keep the slow part float (precision.float_nodes)")


ARM_MACHINES = ("aarch64", "arm")


def cpu_flags() -> set[str]:
    """This host's CPU feature flags (Linux /proc/cpuinfo; empty elsewhere): the speed warning runs
    where run.py just timed the bundle, so they are the timed CPU's."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.split(":")[0].strip() == "flags"), "")
    return set(line.partition(":")[2].split())


def wide_range_float(out: Path, key: str = "wide_range_float") -> dict:
    """{tensor: share of its non-zero calibration values int8 would round to 0} that the build
    kept float (manifest `precision.wide_range_float`; arm-cpu), or with key="long_recurrences_float"
    {recurrent node: steps}; {} when none or no manifest."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    kept = ((manifest.get("precision") or {}) if isinstance(manifest, dict) else {}).get(key)
    return {str(k): float(v) for k, v in kept.items() if isinstance(v, (int, float))} if isinstance(kept, dict) else {}


def finish_host_report(out: Path, settings: dict, results: dict, result) -> dict:
    """One warning when int8 agrees poorly with FP32 (report.min_sqnr_db / min_agreement) and one
    when it ran slower than FP32 (`speed_warning`), written into results.json and the report; then
    report.html."""
    from edgepipe.accuracy.compare import accuracy_warning
    from edgepipe.delivery.report import render_report

    warning = accuracy_warning(results.get("accuracy"), settings["report"], out, str(results.get("where")))
    results["accuracy_warnings"] = [warning] if warning else []
    if warning:
        result.warnings.append(warning)
    slow = speed_warning(results)
    results["speed_warnings"] = [slow] if slow else []
    if slow:
        result.warnings.append(slow)
    wide = wide_range_float(out)
    if wide:  # tensors the full-integer build kept float (their int8 grid zeroes most values)
        results["wide_range_float"] = wide
    recurrences = wide_range_float(out, "long_recurrences_float")
    if recurrences:  # LSTM / GRU / RNN nodes kept float: {node: steps}
        results["long_recurrences_float"] = {name: int(steps) for name, steps in recurrences.items()}
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
