"""Print the README's benchmark tables from benchmarks/results/*.json.

Why: the README must show the latest measured numbers, with the machine they ran on, not numbers
typed by hand. Run the benchmarks, then `python benchmarks/summarize.py` and paste its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.realmodels.checks: the corpus rules

from summarize_accuracy import accuracy_goals, flip_margins, int8_noise_floor
from summarize_format import fmt
from summarize_precision import precision_search
from summarize_speed import arm_kernel_profile
from tests.realmodels.checks import FP32_RTOL, SHIPPED_INT8_SQNR_DB, fp32_tolerance

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def calibration_vs_peers(data: dict) -> list[str]:
    lines = [f"Model: {data['model']}; {data['calib_samples']} calibration samples "
             f"({data['calib_large_samples']} for the growth rows); host {data['host'].get('machine', '')}; "
             f"median of {data.get('runs_per_row', 1)} fresh processes per row; peak = the worker's own VmHWM.", "",
             "| calibrator | samples | wall s | own peak MB | growth MB | top-1 agreement | top-1 | SQNR dB, own placement "
             "| SQNR dB, our placement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        samples = data["calib_large_samples"] if "large" in run.get("calib", "") else data["calib_samples"]
        same = run.get("same_placement") or {}
        ours = run["method"].startswith("ours:")
        lines.append(f"| {run['method']} | {samples} | {fmt(run.get('wall_s'), 2)} | {fmt(run.get('peak_mb'), 0)} | "
                     f"{fmt(run.get('growth_mb'), 0)} | {fmt(run.get('top1_agreement'))} | {fmt(run.get('top1'))} | "
                     f"{fmt(run.get('sqnr_db'), 1)} | {fmt(run.get('sqnr_db') if ours else same.get('sqnr_db'), 1)} |")
    return lines


def calibration_scaling(data: dict) -> list[str]:
    lines = [f"Model: {data['model']}; host {data['machine'].get('cpu', '')}, {data['machine'].get('cores')} cores; "
             f"median of {data.get('runs_per_row', 1)} fresh processes per row; peak = the child's own VmHWM.", "",
             "| calibrator | samples | wall s | own peak MB | growth MB |", "|---|---|---|---|---|"]
    for row in data["rows"]:
        if "error" in row:
            continue
        lines.append(f"| {row['kind']} | {row['samples']} | {fmt(row['wall_s'], 2)} | {fmt(row.get('peak_mb'), 0)} | "
                     f"{fmt(row.get('growth_mb'), 0)} |")
    return lines


def host_line(host: dict, load: list | None = None) -> str:
    """The CPU a timing ran on, its int8-relevant features and the load average (timing.host_record)."""
    if "flags" not in host:  # results written before the host record existed
        return f"host {host.get('processor') or host.get('cpu') or host.get('machine', '')}"
    features = ", ".join(flag for flag, present in host["flags"].items() if present) or "none of the listed"
    text = (f"host {host['machine']} ({host['cpu']}), {host['cores']} cores shared with other jobs; CPU features: "
            f"{features}; int8 dot-product instructions: {'yes' if host['int8_dot_product'] else 'no'}")
    start = host.get("loadavg")
    if start:
        text += f"; load average (1 min) {fmt(start[0], 1)}" + (f" -> {fmt(load[0], 1)}" if load else "")
    return text


def _spread(*values) -> str:
    spreads = [v for v in values if v is not None]
    return f"{max(spreads) * 100:.0f}%" if spreads else "-"


def tflite_latency(data: dict) -> list[str]:
    rounds = {row.get("rounds") for row in data["latency"]}
    lines = [f"{data.get('note', '')}; {host_line(data['host'], data.get('loadavg_end'))}; "
             f"LiteRT {data.get('litert', '?')}; {'/'.join(map(str, sorted(r for r in rounds if r)))} rounds. "
             "spread = (max - min) / median of the round medians, the larger of int8's and fp32's.", "",
             "| model | params | int8/fp32 size | XNNPACK 1 thread int8 / fp32 ms (ratio) | spread "
             "| no delegates 1 thread (ratio) | spread |",
             "|---|---|---|---|---|---|---|"]
    for row in data["latency"]:
        x = row["latency_ms"].get("xnnpack/t1", {})
        n = row["latency_ms"].get("no_delegates/t1", {})
        lines.append(f"| {row['model']} | {row['params']:,} | {fmt(row['size_ratio'])} | "
                     f"{fmt(x.get('int8'), 4)} / {fmt(x.get('fp32'), 4)} ({fmt(x.get('int8_over_fp32'), 2)}x) | "
                     f"{_spread(x.get('int8_spread'), x.get('fp32_spread'))} | "
                     f"{fmt(n.get('int8'), 4)} / {fmt(n.get('fp32'), 4)} ({fmt(n.get('int8_over_fp32'), 2)}x) | "
                     f"{_spread(n.get('int8_spread'), n.get('fp32_spread'))} |")
    conversion = data.get("conversion")
    if conversion:
        files = conversion.get("files", {})
        ratio = (files["model.tflite"] / files["model.fp32.tflite"]) if "model.fp32.tflite" in files else None
        runs = conversion.get("build_tflite_runs_s")
        lines += ["", f"Conversion of a {conversion['params']:,}-parameter CNN ({conversion['model']}): build_tflite "
                      f"{fmt(conversion['build_tflite_s'], 1)} s"
                      + (f" (median of {len(runs)}: {', '.join(fmt(r, 1) for r in runs)})" if runs else "")
                      + f" (goal < {conversion.get('goal_s', 30)} s); int8/fp32 size {fmt(ratio)}."]
    return lines


def tflite_vs_ai_edge_quantizer(data: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    rounds = sorted({case["rounds"] for case in data["cases"] if case.get("rounds")})
    lines = [f"{data.get('note', '')} ({versions}); {host_line(data['host'], data.get('loadavg_end'))}"
             + (f"; {'/'.join(map(str, rounds))} latency rounds" if rounds else "") + ". spread = (max - min) / median "
             "of the latency round medians.", "",
             "| model | engine | top-1 | argmax agreement | SQNR dB | size bytes | XNNPACK partitions | latency / fp32 "
             "| spread | convert s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in data["cases"]:
        for engine, row in case["results"].items():
            if "error" in row:
                lines.append(f"| {case['model']} | {engine} | error: {row['error'][:100]} | | | | | | | |")
                continue
            lines.append(f"| {case['model']} | {engine} | {fmt(row.get('top1'))} | "
                         f"{fmt(row.get('argmax_agreement'))} | {fmt(row.get('sqnr_db'), 1)} | {row.get('size_bytes')} | "
                         f"{row.get('delegate_partitions')} | "
                         f"{fmt(row.get('latency_over_fp32'), 2)}x | {_spread(row.get('latency_spread'))} | "
                         f"{fmt(row.get('convert_s'), 2)} |")
    return lines


def accuracy_recovery(data: dict) -> list[str]:
    lines = [f"Budget: top-1 drop <= {data['settings']['budget']}; ONNX Runtime Q/DQ int8.", "",
             "| model | variant | top-1 | argmax agreement | SQNR dB | weight bytes | float groups |",
             "|---|---|---|---|---|---|---|"]
    for case in data["cases"]:
        for variant, row in case["rows"].items():
            lines.append(f"| {case['model']} | {variant} | {fmt(row.get('top1'))} | {fmt(row.get('argmax_agreement'))} | "
                         f"{fmt(row.get('sqnr_db'), 1)} | {row.get('weight_bytes')} | {fmt(row.get('float_groups'))} |")
    return lines


def build_stages(data: dict) -> list[str]:
    stages = ["export", "simplify", "fold", "calibrate", "backend", "bundle", "report"]
    lines = [f"{host_line(data['host'], data.get('loadavg_end'))}; seconds, median of {data.get('repeats', 1)} "
             "fresh builds (each a new process in a new project folder; the second target reuses the first's "
             "stage cache), c = reused from the stage cache; wall = the whole CLI process with its spread "
             "(max - min) / median.", "",
             "| model | target | " + " | ".join(stages) + " | wall | spread |", "|---|---|" + "---|" * (len(stages) + 2)]
    for run in data["runs"]:
        if "error" in run:
            continue
        cells = []
        for stage in stages:
            entry = run["stages"].get(stage)
            cells.append("-" if entry is None else f"{entry['seconds']:.2f}{' c' if entry['cached'] else ''}")
        wall = run.get("wall_s") or {}
        lines.append(f"| {run['model']} | {run['target']} | " + " | ".join(cells)
                     + f" | {fmt(wall.get('median'), 2)} | {_spread(wall.get('spread'))} |")
    return lines


def _fp32_ok(row: dict, entry: dict) -> bool:
    """arm-cpu fp32 within 1e-4 of the reference (or within 4x the file's own float noise, ORT
    optimized vs plain, where that is larger), or for a file shipped dynamically quantized
    (reference: ORT running its int8 kernels) within that file's own noise."""
    if row.get("shipped_quantized"):
        return min(entry.get("fp32_sqnr_db") or [0.0]) >= SHIPPED_INT8_SQNR_DB
    return entry.get("fp32_max_rel_error", 1.0) <= fp32_tolerance(row.get("ort_float_noise"))


CORPUS_TARGETS = ("arm-cpu", "jetson", "desktop-gpu")  # rows measured before desktop-gpu was added lack it


def real_model_corpus(data: dict) -> list[str]:
    cpu = data["host"].get("cpu", {})
    method = data.get("method", {})
    lines = [f"Host {cpu.get('model', data['host'].get('machine', ''))} ({'VNNI' if cpu.get('vnni') else 'no VNNI'}, "
             f"{'AVX2' if cpu.get('avx2') else 'no AVX2'}), {data['host'].get('cpus')} cores; "
             f"{method.get('calib_samples')} calibration / {method.get('eval_samples')} held-out samples per model. "
             "fp32: max |tflite - reference| / max |reference| (reference: ONNX Runtime on the file as shipped, "
             "PyTorch for factories). int8: worst per-output SQNR vs the reference in dB (arm-cpu .tflite in LiteRT, "
             "jetson / desktop-gpu Q/DQ ONNX in ONNX Runtime; '-': a row measured before desktop-gpu was added), "
             "XNNPACK: partitions of the arm-cpu int8 .tflite in LiteRT and the ops left on builtin kernels ('-': "
             "not recorded for that row), next to ONNX Runtime quantize_static MinMax per-channel on the "
             "same file and samples. checks: fp32 <= 1e-4, or 4x ONNX Runtime's own optimized-vs-plain difference where that is larger (a file shipped dynamically quantized: fp32 SQNR >= "
             "30 dB against ONNX Runtime running its int8 kernels) and every output's int8 SQNR >= ORT's - 1 dB "
             "(what tests/test_real_models.py asserts). s: CLI build wall time.", "",
             "| model | family | input | arm-cpu fp32 | arm-cpu int8 dB | XNNPACK | jetson int8 dB | desktop-gpu int8 dB | ORT MinMax dB | checks | build s (arm / jetson / desktop) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def short(text) -> str:
        return str(text).replace("|", "/").replace("\n", " ")[:70]

    def int8(entry: dict) -> str:
        if "error_line" in entry:
            return "refused"
        return "-" if entry.get("exit_code") or not entry.get("int8_sqnr_db") else fmt(min(entry["int8_sqnr_db"]), 1)

    def refusal(row: dict, target: str) -> str:
        entry = row[target]
        ok = entry["exit_code"] == 2 and row.get("refused_node", "?") in (entry["error_line"] or "")
        return (f"{target} {'refused' if ok else 'not refused cleanly'} (exit {entry['exit_code']}"
                f"{', ' + repr(short(entry['error_line'])) if entry['error_line'] else ''})")

    def xnnpack(entry: dict) -> str:
        measured = entry.get("xnnpack")
        if not measured:
            return "-"
        outside = ", ".join(f"{op} x{count}" for op, count in measured["outside"].items())
        return f"{measured['partitions']}" + (f" (outside: {outside})" if outside else "")

    def verdict(row: dict) -> str:
        problems, refusals = [], []
        peer = row.get("ort_minmax_sqnr_db")
        for target in [t for t in CORPUS_TARGETS if t in row]:
            entry = row.get(target, {})
            if "error_line" in entry:  # refused on this target, built on the other
                (refusals if entry["exit_code"] == 2 else problems).append(refusal(row, target))
                continue
            if entry.get("exit_code"):
                problems.append(f"{target} build fails: {short(entry.get('error', ''))}")
                continue
            if target == "arm-cpu" and not _fp32_ok(row, entry):
                problems.append("arm-cpu fp32")
            low = [k for k, (o, p) in enumerate(zip(entry.get("int8_sqnr_db", []), peer or []))
                   if not o >= p - 1.0 and p != float("inf")]
            if low:
                problems.append(f"{target} int8 below ORT on output {', '.join(map(str, low))}")
        if any(p == float("inf") for p in peer or []):  # ORT's quantizer left those outputs' path float
            problems.append("no int8 peer: ORT quantize_static left the outputs float")
        if row.get("ort_minmax_error"):
            problems.append(f"no int8 peer: ORT quantize_static fails ({short(row['ort_minmax_error'].split('failed:')[-1].strip())})")
        return "; ".join((problems or ["pass"]) + refusals)

    for name, row in data["models"].items():
        if all("error_line" in row[t] for t in CORPUS_TARGETS if t in row):  # refused everywhere
            verdicts = [refusal(row, target) for target in CORPUS_TARGETS if target in row]
            lines.append(f"| {name} | {row['family']} | - | - | - | - | - | - | - | " + "; ".join(verdicts).replace("|", "/")
                         + " | - |")
            continue
        arm, jetson, desktop = row.get("arm-cpu", {}), row.get("jetson", {}), row.get("desktop-gpu", {})
        fp32 = "-" if arm.get("exit_code") or arm.get("fp32_max_rel_error") is None else f"{arm['fp32_max_rel_error']:.1e}"
        if fp32 != "-" and row.get("shipped_quantized"):
            fp32 = f"{fmt(min(arm['fp32_sqnr_db']), 1)} dB vs the shipped int8 file"
        elif fp32 != "-" and arm["fp32_max_rel_error"] > FP32_RTOL and row.get("ort_float_noise") is not None:
            fp32 += f" (ORT vs ORT unoptimized: {row['ort_float_noise']:.1e})"
        peer = fmt(min(row["ort_minmax_sqnr_db"]), 1) if row.get("ort_minmax_sqnr_db") else "fails"
        lines.append(f"| {name} | {row['family']} | {'x'.join(map(str, row.get('input', [])))} | {fp32} | {int8(arm)} | "
                     f"{xnnpack(arm)} | {int8(jetson)} | {int8(desktop) if desktop else '-'} | {peer} | {verdict(row)} | "
                     f"{fmt(arm.get('wall_s'), 0)} / {fmt(jetson.get('wall_s'), 0)} / {fmt(desktop.get('wall_s'), 0)} |")
    heads = [(name, row) for name, row in data["models"].items()
             if any("int8_head_agreement" in row.get(target, {}) for target in ("arm-cpu", "jetson"))]
    if heads:
        lines += ["", "What users read off the output, int8 vs FP32 (tests/realmodels/decode.py: greedy CTC "
                  "reading agreement, 1 - edit distance / length; detector boxes after the package's threshold "
                  "and NMS, F1 at IoU 0.5; pitch: FP32-voiced frames still voiced within 50 cents):", ""]
        kinds = {"yolox": "box F1", "pitch": "voiced-pitch agreement"}
        for name, row in heads:
            kind = kinds.get(corpus_head(row), "reading agreement")
            peer = row.get("ort_minmax_head_agreement")
            lines.append(f"- {name} {kind}: arm-cpu {fmt(row['arm-cpu'].get('int8_head_agreement'), 3)}, jetson "
                         f"{fmt(row['jetson'].get('int8_head_agreement'), 3)}, ORT MinMax "
                         f"{fmt(peer, 3) if peer is not None else 'none (its quantizer fails on the file)'}")
    return lines


def corpus_head(row: dict) -> str:
    """The decoding a corpus row's agreement used (rows written before `head` was recorded:
    detectors boxes, the others CTC)."""
    return row.get("head") or ("yolox" if "detector" in row.get("family", "") else "ctc")


def onnx_node_conformance(data: dict) -> list[str]:
    versions = data["versions"]
    lines = [f"onnx {versions['onnx']} backend tests ({data['all_cases']} cases with tensor data), through "
             f"`edgepipe build`; onnxruntime {versions['onnxruntime']}, ai-edge-litert {versions['ai_edge_litert']}.", "",
             "| suite | cases selected | claimed | built | matched | refused (one line) | wrong numbers | crashed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, suite in data["suites"].items():
        lines.append(f"| {name} | {suite['cases_selected']} | {suite['claimed_cases']} | {suite['built']} | "
                     f"{suite['matched']} | {suite['refused']} | {suite['mismatch']} | {suite['crashed']} |")
    return lines


def arm_speed(data: dict) -> list[str]:
    host = data["host"]
    features = ", ".join(flag for flag, present in host["flags"].items() if present) or "none of the listed"
    dot = host["int8_dot_product"]
    lines = [f"Host {host['machine']} ({host['cpu']}), {host['cores']} cores shared with other jobs (load average "
             f"at each model's start and end in the table); CPU features: {features}; int8 dot-product "
             f"instructions: {'yes' if dot else 'no'}. LiteRT {data['litert']}, XNNPACK; latency = median of "
             "alternating int8 / fp32 rounds (each the median of its invocations).", "",
             "| model | architecture | XNNPACK partitions int8 / fp32 | ops outside (int8) | "
             "TRANSPOSE / ONNX Transpose | int8 ms 1 thr | fp32 ms 1 thr | int8/fp32 1 thr | int8/fp32 4 thr | "
             "rounds x invocations 1 / 4 thr | load 1 min start / end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for name, row in data["models"].items():
        if "error" in row:
            lines.append(f"| {name} | {row.get('architecture', '')} | build failed: {row['error']} | | | | | | | | |")
            continue
        outside = ", ".join(f"{op} x{n}" for op, n in row["int8"]["outside"].items()) or "-"
        one, four = row["latency_ms"]["1"], row["latency_ms"]["4"]
        ratios.append((one["int8_over_fp32"], four["int8_over_fp32"]))
        load = row.get("loadavg", {})
        lines.append(f"| {name} | {row['architecture']} | {row['int8']['partitions']} / {row['fp32']['partitions']} | "
                     f"{outside} | {row['tflite_transposes']} / {row['onnx_transposes']} | {fmt(one['int8'])} | "
                     f"{fmt(one['fp32'])} | {fmt(one['int8_over_fp32'], 2)} | {fmt(four['int8_over_fp32'], 2)} | "
                     f"{row['rounds']} x {one.get('iterations', row['iterations'])} / "
                     f"{four.get('iterations', row['iterations'])} | {fmt(load.get('start', [None])[0], 2)} / "
                     f"{fmt(load.get('end', [None])[0], 2)} |")
    goals = data["goals"]
    limit = 0.5 if dot else 1.0
    lines += ["", f"- {len(goals['architectures_fully_delegated'])} of {goals['architectures']} corpus architectures "
              f"fully delegated (every model one partition, nothing on builtin kernels); "
              f"{goals['models_fully_delegated']} of {goals['models']} models",
              f"- TRANSPOSE <= ONNX Transpose on {goals['models'] - len(goals['transposes_over_onnx'])} of "
              f"{goals['models']} models" + (f" (not: {', '.join(goals['transposes_over_onnx'])})"
                                             if goals["transposes_over_onnx"] else ""),
              f"- int8 <= {limit}x fp32 (the goal for a host {'with' if dot else 'without'} int8 dot-product "
              f"instructions): {sum(r[0] <= limit for r in ratios)} of {len(ratios)} models with 1 thread, "
              f"{sum(r[1] <= limit for r in ratios)} of {len(ratios)} with 4 threads"]
    return lines


def bounded_cost(data: dict) -> list[str]:
    method = data["rss_method"]
    lines = [f"`edgepipe build --target {data['target']}` on the model as shipped, no --eval, one fresh child "
             f"process per build (peak RSS of that process tree only: a child allocating 100 MB / 1 GB reads "
             f"{method['child_100mb_peak_mb']:.0f} / {method['child_1000mb_peak_mb']:.0f} MB while the parent "
             f"holds 1 GB); host {data['host'].get('machine', '')}, {data['host'].get('cpus')} cores.", ""]
    for skipped in data.get("skipped_models") or []:
        lines += [f"{skipped['model']} did not build ({skipped['error']}); measured the next model.", ""]
    lines += ["| model | calibration samples | data MB | eval kept of held out | peak RSS MB | bundle MB | "
              "eval.npz MB | build s | calibrate s |", "|---|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        if run["rc"] != 0:
            lines.append(f"| {run['model']} | {run['samples']} | {fmt(run['data_mb'], 1)} | failed: {run.get('error')} "
                         "| | | | | |")
            continue
        kept = f"{run['eval']['samples']} of {run['eval']['available']}" if run.get("eval") else "-"
        lines.append(f"| {run['model']} | {run['samples']} | {fmt(run['data_mb'], 1)} | {kept} | "
                     f"{fmt(run['peak_rss_mb'], 0)} | {fmt(run['bundle_mb'], 1)} | {fmt(run['eval_npz_mb'], 1)} | "
                     f"{fmt(run['seconds'], 1)} | {fmt(run['stage_seconds'].get('calibrate'), 1)} |")
    goals = data["goals"]
    lines += ["", "Samples are those given; the build holds 10% out for evaluation and calibrates on the rest.", ""]
    for name, ratio in data["ratios"].items():
        first, last = (int(n) for n in name.split("->"))
        if (first, last) == (100, 1000):
            lines.append(f"- {name} samples: peak RSS x{ratio['peak_rss']} (goal <= {goals['peak_rss_ratio']}), "
                         f"bundle x{ratio['bundle']} (goal <= {goals['bundle_ratio']}), "
                         f"time x{ratio['time']} (goal <= {goals['time_ratio']})")
        else:
            peak = next(r["peak_rss_mb"] for r in data["runs"] if r["samples"] == last)
            lines.append(f"- {name} samples: peak RSS x{ratio['peak_rss']} ({peak:.0f} MB, goal < "
                         f"{goals['max_peak_rss_mb']} MB), bundle x{ratio['bundle']}, time x{ratio['time']} "
                         f"({last // first}x the samples)")
    return lines


def int16_activations(data: dict) -> list[str]:
    lines = [f"{data.get('method', '')}; {data['host'].get('note', '')}.", "",
             "| model | output SQNR int8 / 16x8 / fp32 dB | 16x8 with int8's clipped ranges | argmax agreement int8 / 16x8 "
             "| p50 int8 / 16x8 / fp32 ms | int16 nodes (left int8) |",
             "|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        sqnr = {k: min(v.values()) for k, v in row["sqnr_db"].items()}
        agree, ms = row["argmax_agreement"], row["latency_ms_p50"]
        lines.append(f"| {name} | {fmt(sqnr['int8'], 1)} / {fmt(sqnr['int16'], 1)} / {fmt(sqnr['fp32'], 1)} | "
                     f"{fmt(sqnr.get('int16_int8_threshold'), 1)} | {fmt(agree['int8'])} / {fmt(agree['int16'])} | "
                     f"{fmt(ms['int8'])} / {fmt(ms['int16'])} / {fmt(ms['fp32'])} | "
                     f"{row['int16_nodes']} ({len(row['int16_fallback'])}) |")
    return lines


def xnnpack_op_speed(data: dict) -> list[str]:
    host = data["host"]
    lines = [f"{host.get('cpu', '')}, int8 dot product: {host.get('int8_dot_product')}, 1 thread, load average "
             f"{fmt(data['loadavg_before'][0], 1)}.", "", "| case | variant | int8 ms | fp32 ms | int8 / fp32 |",
             "|---|---|---|---|---|"]
    for case, rows in data["cases"].items():
        variants = dict.fromkeys(key.rsplit(" ", 1)[0] for key in rows)
        for variant in variants:
            int8, fp32 = rows.get(f"{variant} int8", {}), rows.get(f"{variant} float32", {})
            ratio = int8["ms"] / fp32["ms"] if "ms" in int8 and "ms" in fp32 else None
            delegated = "" if int8.get("delegated", True) else " (not delegated)"
            lines.append(f"| {case} | {variant} | {fmt(int8.get('ms'), 4)}{delegated} | {fmt(fp32.get('ms'), 4)} | "
                         f"{fmt(ratio, 2)} |")
    return lines


def layernorm_int8(data: dict) -> list[str]:
    host = data["host"]
    lines = [f"{host.get('cpu', '')}, int8 dot product: {host.get('int8_dot_product')}, LiteRT {data.get('litert')}, "
             f"1 thread, median of {data.get('rounds')} alternating rounds; SQNR vs the FP32 reference on the "
             "held-out samples.", "",
             "| model | LayerNorm lowering | XNNPACK partitions / outside | int8 ms | fp32 ms | int8 / fp32 | SQNR dB |",
             "|---|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        order = ["shipped", "int8", "int8 centering", "removed", "shipped, depthwise float"]  # its VARIANTS
        for variant, result in sorted(row.get("variants", {}).items(),
                                      key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
            measured = result.get("delegation") or {}
            outside = ", ".join(f"{op} x{n}" for op, n in measured.get("outside", {}).items()) or "-"
            ms = result["latency_ms_1_thread"]
            lines.append(f"| {name} | {variant} | {measured.get('partitions')} / {outside} | {fmt(ms['int8'], 4)} | "
                         f"{fmt(ms['fp32'], 4)} | {fmt(ms['int8_over_fp32'], 2)} | "
                         f"{' / '.join(fmt(v, 1) for v in result['sqnr_db'])} |")
    return lines


def _load_note(data: dict) -> str:
    """The host's 1-minute load average over the run, where the results file recorded it."""
    if "load_avg_start" not in data:
        return ""
    return f"; host load average (1 min) {data['load_avg_start'][0]:.1f} at start, {data['load_avg_end'][0]:.1f} at end"


def calibration_real_models(data: dict) -> list[str]:
    """Whole `edgepipe build --target jetson` vs ORT quantize_static, per real model (medians)."""
    code = f"commit {data['commit']}" if data.get("commit") else data.get("note", "code unknown")
    lines = [f"Code: {code}; host {data['host'].get('machine', '')}, {data['host'].get('cpus')} "
             f"cpus; median of {data.get('runs_per_calibrator', 1)} fresh processes per row; peak = the worker's "
             "own VmHWM; ours: wall/CPU of the whole build (`calibrate + backend` stages in brackets)"
             + _load_note(data) + ".", "",
             "| model | calibrator | wall s | CPU s | own peak MB | wall / ORT Entropy | CPU / ORT Entropy "
             "| string agreement | SQNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in data["models"].items():
        for run in entry["runs"]:
            if "error" in run:
                lines.append(f"| {name} | {run['method']} | error: {run['error'][:80]} | | | | | | |")
                continue
            ours = "build_wall_s" in run
            wall = f"{run['build_wall_s']:.1f} ({run['wall_s']:.1f})" if ours else fmt(run.get("wall_s"), 1)
            cpu = run.get("build_cpu_s") if ours else run.get("cpu_s")
            ratio = run.get("build_vs_ort_entropy", run.get("wall_vs_ort_entropy"))
            cpu_ratio = run.get("build_cpu_vs_ort_entropy", 1.0 if not ours and cpu is not None else None)
            lines.append(f"| {name} | {run['method']} | {wall} | {fmt(cpu, 1)} | {fmt(run.get('peak_mb'), 0)} | "
                         f"{fmt(ratio, 2)} | {fmt(cpu_ratio, 2)} | "
                         f"{fmt(run.get('string_agreement'))} | {fmt(run.get('sqnr_db'), 1)} |")
    return lines
def calibration_ab(data: dict) -> list[str]:
    """Two versions of the whole jetson build, alternating fresh processes (calibration_ab.py)."""
    lines = [f"{data['what']}; {len(data['runs'])} runs; medians per version; load average per run in brackets; "
             f"bundles identical across every run: {'yes' if data.get('identical_bundles') else 'NO'}.", "",
             "| version | commit | build wall s | build CPU s | calibrate + backend s | own peak MB | load |",
             "|---|---|---|---|---|---|---|"]
    for side in ("A", "B"):
        row = data[side]
        loads = ", ".join(f"{value:.1f}" for value in row.get("load_avg", []))
        lines.append(f"| {side} | {row['commit']} | {fmt(row['build_wall_s'], 1)} | {fmt(row['build_cpu_s'], 1)} | "
                     f"{fmt(row['wall_s'], 1)} | {fmt(row['peak_mb'], 0)} | {loads} |")
    ratio = data["B_over_A"]
    lines.append(f"| B / A | | {fmt(ratio['build_wall_s'], 3)} | {fmt(ratio['build_cpu_s'], 3)} | "
                 f"{fmt(ratio['wall_s'], 3)} | | |")
    return lines


SECTIONS = [
    ("Real-model corpus through the CLI (`benchmarks/real_model_corpus.py`)", "real_model_corpus", real_model_corpus),
    ("Calibration vs ONNX Runtime quantize_static (`benchmarks/calibration_vs_peers.py`)", "calibration_vs_peers", calibration_vs_peers),
    ("Calibration speed on a real model, whole jetson build vs ORT Entropy, after "
     "(`benchmarks/calibration_real_models.py --models ocr_rec --methods ours:auto,ort:Entropy`)",
     "calibration_speed_real_models", calibration_real_models),
    ("... A/B of two versions of the whole build, alternating (`benchmarks/calibration_ab.py`)", "calibration_speed_ab",
     calibration_ab),
    ("... round 5's second final run, lower load (commit fa4ba44)", "calibration_speed_round5_lower_load",
     calibration_real_models),
    ("... round 5's first A/B (main f950947 vs c1c76ed)", "calibration_speed_round5_ab_first", calibration_ab),
    ("... round 4's final run (commit f5325e2, loaded host)", "calibration_speed_round4_final", calibration_real_models),
    ("... round 4's A/B (main 41c0875 vs 581eb3e)", "calibration_speed_round4_ab", calibration_ab),
    ("... the previous final run, host otherwise idle (commit dd9bca9)", "calibration_speed_dd9bca9_idle",
     calibration_real_models),
    ("... the same speed-ups (commit 3323b44) on a host loaded by other work (load average 6-7)",
     "calibration_speed_loaded_host", calibration_real_models),
    ("... the same, before this round's exact speed-ups (edgepipe of commit bae6392, same session as the loaded run)",
     "calibration_speed_base", calibration_real_models),
    ("... the same, after the previous round's speed-up (edgepipe of commit a646c60)",
     "calibration_speed_previous_round", calibration_real_models),
    ("... the same, before the previous round's speed-up (edgepipe of commit 1f76f5f)", "calibration_speed_before",
     calibration_real_models),
    ("... before, an earlier session of the same (heavier host load, no CPU times)", "calibration_speed_before_first",
     calibration_real_models),
    ("Calibration memory vs number of samples (`benchmarks/calibration_scaling.py`)", "calibration_scaling", calibration_scaling),
    ("TFLite int8 vs fp32 on this host (`benchmarks/tflite_latency.py`)", "tflite_latency", tflite_latency),
    ("Our int8 lowering vs ai-edge-quantizer on the same fp32 .tflite (`benchmarks/tflite_vs_ai_edge_quantizer.py`)",
     "tflite_vs_ai_edge_quantizer", tflite_vs_ai_edge_quantizer),
    ("Accuracy recovery: PTQ vs mixed precision vs QAT+KD (`benchmarks/accuracy_recovery.py`)", "accuracy_recovery", accuracy_recovery),
    ("Mixed-precision search through the CLI (`benchmarks/precision_search.py`)", "precision_search",
     precision_search),
    ("Build time per stage (`benchmarks/build_stages.py`)", "build_stages", build_stages),
    ("ONNX backend node tests through the CLI (`benchmarks/onnx_node_conformance.py`)", "onnx_node_conformance",
     onnx_node_conformance),
    ("ARM CPU speed: delegation, transposes, int8/fp32 (`benchmarks/arm_speed.py`)", "arm_speed", arm_speed),
    ("... the same on an x86 host with AMX-INT8 (`--results`)", "arm_speed_amx_host", arm_speed),
    ("Where int8 time goes, by XNNPACK microkernel (`benchmarks/arm_kernel_profile.py`)", "arm_kernel_profile",
     arm_kernel_profile),
    ("Build cost vs number of calibration samples (`benchmarks/bounded_cost.py`)", "bounded_cost", bounded_cost),
    ("TFLite 16x8 (int16 activations) vs int8 vs fp32 (`benchmarks/int16_activations.py`)", "int16_activations",
     int16_activations),
    ("Per-op XNNPACK int8 vs fp32 (`benchmarks/xnnpack_op_speed.py`)", "xnnpack_op_speed", xnnpack_op_speed),
    ("Integer LayerNorm on the corpus transformers / ConvNeXt (`benchmarks/layernorm_int8.py`)", "layernorm_int8",
     layernorm_int8),
    ("Accuracy goals of issue 14 on the models as shipped (`benchmarks/accuracy_goals.py`)", "accuracy_goals",
     accuracy_goals),
    ("The recognizer's int8 noise floor (`benchmarks/int8_noise_floor.py`)", "int8_noise_floor", int8_noise_floor),
    ("... the same draws built with `fold.cross_layer_equalization: depthwise` (`--config`)",
     "int8_noise_floor_cle_depthwise", int8_noise_floor),
    ("Flipped time steps of the recognizer (`benchmarks/flip_margins.py`)", "flip_margins", flip_margins),
]


def main() -> None:
    for title, name, render in SECTIONS:
        data = load(name)
        if data is None:
            continue
        print(f"### {title}\n")
        try:
            print("\n".join(render(data)))
        except (KeyError, TypeError) as exc:
            print(f"(results file has an unexpected layout: {exc})")
        print()


if __name__ == "__main__":
    main()
