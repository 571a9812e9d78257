"""results.json -> report.html (self-contained, inline SVG) + report.md (for PRs and CI logs).

One context is computed here and rendered by two templates, so the HTML and the Markdown never
disagree. Optional build artefacts enrich the report when they are found next to the results or
in the bundle: `calibration.json` (activation histograms with the chosen thresholds) and
`sensitivity.json` (per-layer quantization sensitivity). A baseline results.json adds deltas.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.delivery import charts
from edgepipe.errors import UserError
from edgepipe.delivery.regress import load_results
from edgepipe.safeio import CALIBRATION_JSON_MAX_BYTES, JSON_MAX_BYTES, read_json_file, write_text_replacing
from edgepipe.templating import render

MAX_ACTIVATION_PLOTS = 24
MAX_SENSITIVITY_ROWS = 20
MAX_LAYER_BARS = 40  # per-layer chart of `edgepipe compare`: the worst tensors, shown in graph order
MAX_LAYER_ROWS = 20
MAX_RELIABILITY_BINS = 100  # run.py writes 15; a results.json with 400000 drew a 52 MB page
SUMMARY_METRICS = (  # (label, path in results.json, higher is better, unit)
    ("top-1", ("accuracy", "top1"), True, ""),
    ("top-1 FP32", ("accuracy", "fp32_top1"), True, ""),
    ("top-5", ("accuracy", "top5"), True, ""),
    ("argmax agreement vs FP32", ("accuracy", "argmax_agreement"), True, ""),
    ("ECE", ("accuracy", "ece"), False, ""),
    ("latency p50", ("latency_ms", "p50"), False, "ms"),
    ("latency p90", ("latency_ms", "p90"), False, "ms"),
    ("latency p99", ("latency_ms", "p99"), False, "ms"),
    ("latency mean", ("latency_ms", "mean"), False, "ms"),
    ("latency p50, compared model (same run)", ("compare", "latency_ms", "p50"), False, "ms"),
    ("speed-up vs compared model (p50)", ("speedup",), True, "x"),
    ("XNNPACK partitions", ("delegation", "partitions"), False, ""),
    ("model size", ("size_bytes",), False, "bytes"),
    ("peak RSS", ("peak_rss_mb",), False, "MB"),
)


def _get(data: dict, path: tuple):
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value:,.0f} B"
    text = f"{value:.4g}"
    return f"{text} {unit}".strip()


def _delta(value, base, higher_is_better: bool, unit: str) -> tuple[str, str]:
    """(text, css class) for candidate minus baseline; class says better/worse."""
    if value is None or base is None:
        return "", ""
    diff = value - base
    if unit in ("ms", "MB", "bytes") and base:
        text = f"{diff / base * 100:+.1f}%"
    else:
        text = f"{diff:+.4g}"
    if abs(diff) < 1e-12:
        return text, "same"
    return text, "better" if (diff > 0) == higher_is_better else "worse"


def summary_rows(results: dict, baseline: dict | None) -> list[dict]:
    rows = []
    for label, path, higher, unit in SUMMARY_METRICS:
        value = _get(results, path)
        base = _get(baseline, path) if baseline else None
        if value is None and base is None:
            continue
        delta, css = _delta(value, base, higher, unit)
        rows.append({"label": label, "value": _fmt(value, unit), "baseline": _fmt(base, unit) if baseline else "",
                     "delta": delta, "css": css})
    return rows


def output_rows(results: dict, baseline: dict | None) -> list[dict]:
    outputs = ((results.get("accuracy") or {}).get("outputs") or {})
    base_outputs = (((baseline or {}).get("accuracy") or {}).get("outputs") or {})
    rows = []
    for name in sorted(outputs):
        entry = outputs[name] if isinstance(outputs[name], dict) else {}
        base = base_outputs.get(name) or {}
        sqnr = entry.get("sqnr_db")
        rows.append({
            "name": name,
            "sqnr_db": "identical (inf)" if sqnr is None and "cosine" in entry else _fmt(sqnr, "dB"),
            "cosine": _fmt(entry.get("cosine")),
            "argmax_agreement": _agreement_cell(entry) if "exact_match" not in entry
            else f"{_fmt(entry.get('exact_match'))} equal",  # an integer output (labels, indices)
            "baseline_sqnr_db": _fmt(base.get("sqnr_db"), "dB") if baseline else "",
        })
    return rows


def _agreement_cell(entry: dict) -> str:
    """Argmax agreement as measured per position along the class axis (quantmath.class_axis), the
    axis named beyond [N, C]; an older run.py's figure for a wider output (one argmax over the
    flattened sample, no `argmax_axis`) is not shown: it meant nothing."""
    value, axis, shape = entry.get("argmax_agreement"), entry.get("argmax_axis"), entry.get("shape")
    if value is None:
        return "-"
    wide = isinstance(shape, list) and len(shape) > 1
    if wide and axis is None:
        return "- (older run.py: flattened argmax, rerun)"
    return f"{_fmt(value)} per position (class axis {axis})" if wide else _fmt(value)


def find_artifact(name: str, places: list[Path], max_bytes: int = JSON_MAX_BYTES) -> tuple[Path | None, dict | None]:
    """(path, parsed JSON) of the first `name` found in `places` (bounded, regular files only)."""
    for folder in places:
        path = folder / name
        if path.is_file():
            data = read_json_file(path, name, max_bytes)
            return path, (data if isinstance(data, dict) else None)
    return None, None


def _section(builder, path: Path | None, data: dict | None):
    """A report section from an artefact; content of the wrong shape is a one-line error naming it."""
    if data is None:
        return None
    try:
        return builder(data)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise UserError(f"{path}: unexpected content ({type(exc).__name__}: {exc}); rebuild the bundle "
                        f"or remove the file") from None


def sensitivity_section(sensitivity: dict | None) -> dict | None:
    nodes = (sensitivity or {}).get("nodes") or []
    if not nodes:
        return None
    rows = [n for n in nodes if isinstance(n, dict)][:MAX_SENSITIVITY_ROWS]
    scores = [(-(n.get("sqnr_only_db")) if n.get("sqnr_only_db") is not None else 0.0) for n in rows]
    drop_key = "metric_drop" if any(n.get("metric_drop") is not None for n in rows) else None
    values = [float(n[drop_key] or 0.0) for n in rows] if drop_key else [max(60.0 + s, 0.0) for s in scores]
    chart = charts.horizontal_bars(
        f"Per-layer sensitivity (top {len(rows)})", [str(n.get("name")) for n in rows], values,
        f"{sensitivity.get('metric', 'metric')} drop with only this layer quantized" if drop_key
        else "60 dB - SQNR with only this layer quantized (longer = more sensitive)")
    table = [{"rank": n.get("rank", i + 1), "name": n.get("name"), "op_type": n.get("op_type", ""),
              "sqnr_only_db": _fmt(n.get("sqnr_only_db"), "dB"), "metric_drop": _fmt(n.get("metric_drop")),
              "recovery_db": _fmt(n.get("recovery_db"), "dB")} for i, n in enumerate(rows)]
    return {"chart": chart, "rows": table, "metric": sensitivity.get("metric", ""), "total": len(nodes)}


def layer_section(compare: dict | None) -> dict | None:
    """`edgepipe compare`'s per-tensor SQNR along the graph (chart) and the worst tensors (table)."""
    tensors = [t for t in ((compare or {}).get("tensors") or []) if isinstance(t, dict)]
    measured = [t for t in tensors if isinstance(t.get("sqnr_db"), (int, float))]
    if not measured:
        return None
    worst = sorted(measured, key=lambda t: t["sqnr_db"])[:MAX_LAYER_BARS]
    along = sorted(worst, key=lambda t: t.get("position") or 0)
    chart = charts.horizontal_bars(
        f"SQNR vs FP32 along the graph ({len(along)} of {len(tensors)} tensors)",
        [str(t.get("name")) for t in along], [float(t["sqnr_db"]) for t in along],
        "dB, deployed vs FP32 at each tensor (shorter = more error)")
    rows = [{"rank": i, "name": t.get("name"), "producer": t.get("producer", ""),
             "sqnr_db": _fmt(t.get("sqnr_db"), "dB"), "cosine": _fmt(t.get("cosine")),
             "alone_sqnr_db": _fmt(t.get("alone_sqnr_db"), "dB")} for i, t in enumerate(worst[:MAX_LAYER_ROWS], 1)]
    return {"chart": chart, "rows": rows, "total": len(tensors), "deployed": str(compare.get("deployed", "")),
            "where": str(compare.get("where", "")), "samples": compare.get("samples")}


def activation_section(calibration: dict | None) -> dict | None:
    histograms = (calibration or {}).get("histograms") or {}
    tensors = (calibration or {}).get("tensors") or {}
    plots = []
    for name in sorted(histograms)[:MAX_ACTIVATION_PLOTS]:
        hist = histograms[name]
        if not isinstance(hist, dict) or len(hist.get("edges") or []) < 2:
            continue
        chosen = {**(tensors.get(name) or {}), **hist}
        markers = []
        if chosen.get("amax") is not None:
            markers += [(-float(chosen["amax"]), "-amax"), (float(chosen["amax"]), "amax")]
        for key in ("lo", "hi"):
            if chosen.get(key) is not None and not any(abs(m - float(chosen[key])) < 1e-9 for m, _ in markers):
                markers.append((float(chosen[key]), key))
        method = (tensors.get(name) or {}).get("method", "")
        plots.append({"name": name, "method": method,
                      "chart": charts.histogram(hist["edges"], hist["counts"], f"{name} ({method})" if method else name,
                                                "activation value", markers)})
    if not plots:
        return None
    return {"plots": plots, "total": len(histograms), "method": calibration.get("method", "")}


def speed_section(results: dict) -> dict | None:
    """What was compared and which ops stayed outside the delegate (strings for both templates)."""
    compared, delegation = results.get("compare"), results.get("delegation")
    if not isinstance(compared, dict) and not isinstance(delegation, dict):
        return None
    outside = (delegation or {}).get("outside") if isinstance(delegation, dict) else None
    return {
        "model": str(results.get("model") or "?"),
        "compare_model": str(compared.get("model") or "?") if isinstance(compared, dict) else None,
        "outside": ", ".join(f"{op} x{count}" for op, count in sorted(outside.items())) if outside else "none",
        "measured": isinstance(delegation, dict),
        "warnings": [str(w) for w in (results.get("speed_warnings") or [])],
    }


def wide_range_rows(results: dict) -> list[dict]:
    """What the full-integer build kept float: wide-range tensors, most zeroed first, then long
    recurrences (results.json `wide_range_float`, `long_recurrences_float`)."""
    wide = results.get("wide_range_float")
    wide = wide if isinstance(wide, dict) else {}
    rows = [(str(k), v) for k, v in wide.items() if isinstance(v, (int, float))]
    listed = [{"tensor": name, "zeroed": f"{share:.0%} of non-zero values"}
              for name, share in sorted(rows, key=lambda r: (-r[1], r[0]))]
    recurrences = results.get("long_recurrences_float")
    if isinstance(recurrences, dict):
        listed += [{"tensor": str(name), "zeroed": f"recurrence over {steps} steps"}
                   for name, steps in sorted(recurrences.items()) if isinstance(steps, int)]
    return listed


def report_context(results: dict, baseline: dict | None = None, calibration: dict | None = None,
                   sensitivity: dict | None = None, compare: dict | None = None) -> dict:
    accuracy = results.get("accuracy") or {}
    latency = results.get("latency_ms") or {}
    context = {
        "results": results,
        "baseline": baseline,
        "title": f"edgepipe report: {results.get('target', '?')} ({results.get('where', '?')})",
        "summary": summary_rows(results, baseline),
        "outputs": output_rows(results, baseline),
        "device": results.get("device") or {},
        "baseline_device": (baseline or {}).get("device") or {},
        "charts": {"accuracy": None, "latency": None, "reliability": None},
        "sensitivity": sensitivity_section(sensitivity),
        "layers": layer_section(compare),
        "accuracy_warnings": [str(w) for w in (results.get("accuracy_warnings") or [])],
        "activations": activation_section(calibration),
        "calibration_warnings": list((calibration or {}).get("warnings") or []),
        "speed": speed_section(results),
        "wide_range_float": wide_range_rows(results),
    }
    if latency.get("samples"):
        context["charts"]["latency"] = charts.latency_histogram(latency["samples"], latency)
    categories = [label for label, key in (("top-1", "top1"), ("top-5", "top5"), ("argmax agreement", "argmax_agreement"))
                  if accuracy.get(key) is not None]
    if categories:
        keys = {"top-1": ("top1", "fp32_top1"), "top-5": ("top5", "fp32_top5"), "argmax agreement": ("argmax_agreement", None)}
        series = [("deployed", [accuracy.get(keys[c][0]) for c in categories]),
                  ("FP32 reference", [accuracy.get(keys[c][1]) if keys[c][1] else 1.0 for c in categories])]
        if baseline:
            base_acc = baseline.get("accuracy") or {}
            series.append(("baseline", [base_acc.get(keys[c][0]) for c in categories]))
        context["charts"]["accuracy"] = charts.bar_chart("Accuracy vs FP32", categories, series, y_max=1.0)
    if accuracy.get("ece_bins"):
        context["charts"]["reliability"] = charts.reliability_diagram(accuracy["ece_bins"][:MAX_RELIABILITY_BINS])
    return context


def _with_header(results: dict) -> dict:
    """The header fields the templates print, '?' where a results.json leaves them out (they are
    optional to check_results; a file without `model` was an internal error)."""
    return {**results, **{key: results.get(key) or "?" for key in ("model", "target", "where")},
            "samples": results.get("samples")}


def render_report(results_path: str | Path, out_dir: str | Path | None = None, bundle_dir: str | Path | None = None,
                  baseline: str | Path | None = None) -> Path:
    """Write report.html and report.md into `out_dir` (default: next to results.json)."""
    results_path = Path(results_path)
    results = _with_header(load_results(results_path, "results"))
    baseline_data = _with_header(load_results(Path(baseline), "baseline")) if baseline else None
    out = Path(out_dir) if out_dir else results_path.parent
    places = [results_path.parent, results_path.parent.parent] + ([Path(bundle_dir)] if bundle_dir else [])
    calibration = find_artifact("calibration.json", places, CALIBRATION_JSON_MAX_BYTES)
    sensitivity = find_artifact("sensitivity.json", places)
    context = report_context(results, baseline_data)
    context["activations"] = _section(activation_section, *calibration)
    context["calibration_warnings"] = _section(lambda c: [str(w) for w in c.get("warnings") or []], *calibration) or []
    context["sensitivity"] = _section(sensitivity_section, *sensitivity)
    context["layers"] = _section(layer_section, *find_artifact("compare.json", places))
    inside = Path(bundle_dir) if bundle_dir and out.is_relative_to(bundle_dir) else None  # a bundle's report/
    html_path = write_text_replacing(out / "report.html", render("report.html.j2", **context), inside)
    write_text_replacing(out / "report.md", render("report.md.j2", **context), inside)
    return html_path
