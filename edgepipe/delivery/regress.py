"""The release regression gate: a candidate results.json against the last release's.

Why a separate module: CI calls it on every change, so its verdict must be explicit and
machine-readable. Each comparison is one `Check` (accuracy metrics may drop at most `max_drop`,
SQNR at most `max_sqnr_drop_db`, latency percentiles may grow at most `max_latency_increase`);
the result renders as a text table and as JUnit XML (one testcase per check).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from edgepipe.jsonfile import read_json
from edgepipe.errors import UserError, one_line
from edgepipe.settings import RegressSettings

DEFAULT_METRICS = ("top1", "top5", "argmax_agreement", "sqnr_db", "exact_match")
LATENCY_PERCENTILES = ("p50", "p90", "p99")


@dataclass
class Check:
    name: str  # e.g. "accuracy.top1", "accuracy.sqnr_db[logits]", "latency.p50"
    kind: str  # "accuracy" | "latency"
    baseline: float | None
    candidate: float | None
    limit: str  # the budget in words, e.g. "drop <= 0.01"
    passed: bool
    message: str = ""


@dataclass
class RegressionResult:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def table(self) -> str:
        rows = [("check", "baseline", "candidate", "change", "budget", "result")]
        for c in self.checks:
            rows.append((c.name, _fmt(c.baseline), _fmt(c.candidate), _change(c), c.limit,
                         "ok" if c.passed else "FAIL"))
        rows = [tuple(one_line(cell) for cell in row) for row in rows]  # names from results files: one line, inert
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"note: {one_line(n)}" for n in self.notes])

    def to_junit(self) -> str:
        suite = ET.Element("testsuite", name="edgepipe.regress", tests=str(len(self.checks)),
                           failures=str(len(self.failures)), errors="0", skipped="0")
        for c in self.checks:
            # names from results files (a model's output names) go through one_line: a control character
            # there made the XML not well-formed, and CI refused the whole report
            case = ET.SubElement(suite, "testcase", classname=f"edgepipe.regress.{c.kind}", name=one_line(c.name))
            if not c.passed:
                failure = ET.SubElement(case, "failure", message=one_line(c.message), type="BudgetExceeded")
                failure.text = f"baseline {_fmt(c.baseline)}, candidate {_fmt(c.candidate)}, budget {c.limit}"
        if self.notes:
            ET.SubElement(suite, "system-out").text = "\n".join(one_line(n) for n in self.notes)
        suites = ET.Element("testsuites", tests=str(len(self.checks)), failures=str(len(self.failures)))
        suites.append(suite)
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _change(c: Check) -> str:
    if c.baseline is None or c.candidate is None:
        return "-"
    if c.kind == "latency" and c.baseline > 0:
        return f"{(c.candidate / c.baseline - 1) * 100:+.1f}%"
    return f"{c.candidate - c.baseline:+.4g}"


def parse_increase(value) -> float:
    """'10%' -> 0.10; 0.1 -> 0.10 (a ratio). Negative or unparsable values are a UserError."""
    text = str(value).strip()
    try:
        ratio = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"max_latency_increase '{value}' is not a percentage like 10% or a ratio like 0.1") from None
    if ratio < 0 or not math.isfinite(ratio):
        raise UserError(f"max_latency_increase '{value}' must be a non-negative percentage")
    return ratio


_ACCURACY_FIGURES = ("top1", "top5", "fp32_top1", "fp32_top5", "argmax_agreement", "ece", "fp32_ece")
_OUTPUT_FIGURES = ("sqnr_db", "cosine", "argmax_agreement", "max_abs_error", "exact_match")
_BIN_FIGURES = ("lo", "hi", "count", "confidence", "accuracy")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(value, low: float = 0.0) -> bool:
    """None, NaN (which fails any budget) or a value in [low, 1]: a top-1 of 2.0 passed every accuracy budget."""
    return value is None or math.isnan(value) or low - 1e-9 <= value <= 1 + 1e-9


def _expect(condition: bool, path: Path, field_name: str, wanted: str, value) -> None:
    if not condition:
        text = repr(value)
        text = text if len(text) <= 40 else text[:37] + "..."
        raise UserError(f"{path}: '{field_name}' must be {wanted}, got {text}; "
                        f"use the results.json that run.py wrote")


def check_results(data, path: Path, role: str) -> dict:
    """Every figure `report` and `regress` read has the type run.py writes (number or null, a
    mapping where a mapping belongs), so a hand-edited or hostile file fails in one line."""
    _expect(isinstance(data, dict), path, "(top level)", "a mapping", type(data).__name__)
    latency = data.get("latency_ms")
    if not isinstance(latency, dict):
        raise UserError(f"{path}: {role} is not an edgepipe results.json (no latency_ms); use run.py's report/results.json")
    for key, value in latency.items():
        if key == "samples":
            _expect(isinstance(value, list) and all(_is_number(v) for v in value), path, "latency_ms.samples",
                    "a list of numbers", value)
            negative = next((v for v in value if v < 0), None)  # as for the percentiles below
            _expect(negative is None, path, "latency_ms.samples", "a list of times >= 0", negative)
        else:
            _expect(value is None or _is_number(value), path, f"latency_ms.{key}", "a number or null", value)
            # a negative time passed every latency budget: fail closed as for the baseline
            _expect(value is None or not value < 0, path, f"latency_ms.{key}", "a time >= 0", value)
    for key in ("size_bytes", "peak_rss_mb", "samples"):
        _expect(data.get(key) is None or _is_number(data[key]), path, key, "a number or null", data.get(key))
    for key in ("target", "where", "model"):
        _expect(data.get(key) is None or isinstance(data[key], str), path, key, "a string", data.get(key))
    device = data.get("device")
    _expect(device is None or isinstance(device, dict), path, "device", "a mapping", device)
    for key, value in (device or {}).items():
        _expect(value is None or isinstance(value, (str, int, float)), path, f"device.{key}", "a single value", value)
    evaluation = data.get("eval")  # the report reads eval.note (a string there was an internal error)
    _expect(evaluation is None or isinstance(evaluation, dict), path, "eval", "a mapping or null", evaluation)
    accuracy = data.get("accuracy")
    _expect(accuracy is None or isinstance(accuracy, dict), path, "accuracy", "a mapping or null", accuracy)
    accuracy = accuracy or {}
    for key in _ACCURACY_FIGURES:
        _expect(accuracy.get(key) is None or _is_number(accuracy[key]), path, f"accuracy.{key}",
                "a number or null", accuracy.get(key))
        _expect(_fraction(accuracy.get(key)), path, f"accuracy.{key}", "a fraction from 0 to 1", accuracy.get(key))
    outputs = accuracy.get("outputs")
    _expect(outputs is None or isinstance(outputs, dict), path, "accuracy.outputs", "a mapping", outputs)
    for name, entry in (outputs or {}).items():
        _expect(isinstance(entry, dict), path, f"accuracy.outputs.{name}", "a mapping", entry)
        for key in _OUTPUT_FIGURES:
            _expect(entry.get(key) is None or _is_number(entry[key]), path, f"accuracy.outputs.{name}.{key}",
                    "a number or null", entry.get(key))
        axis = entry.get("argmax_axis")
        _expect(axis is None or (isinstance(axis, int) and not isinstance(axis, bool) and axis >= 1), path,
                f"accuracy.outputs.{name}.argmax_axis", "an axis number >= 1 or null", axis)
        for key, low in (("argmax_agreement", 0.0), ("exact_match", 0.0), ("cosine", -1.0)):
            _expect(_fraction(entry.get(key), low), path, f"accuracy.outputs.{name}.{key}",
                    f"a number from {low:g} to 1", entry.get(key))
    bins = accuracy.get("ece_bins")
    _expect(bins is None or isinstance(bins, list), path, "accuracy.ece_bins", "a list", bins)
    for index, entry in enumerate(bins or []):
        _expect(isinstance(entry, dict), path, f"accuracy.ece_bins[{index}]", "a mapping", entry)
        for key in _BIN_FIGURES:
            _expect(entry.get(key) is None or _is_number(entry[key]), path, f"accuracy.ece_bins[{index}].{key}",
                    "a number or null", entry.get(key))
    _check_speed(data, path)
    return data


def _check_speed(data: dict, path: Path) -> None:
    """The int8-vs-compared-model timing and XNNPACK delegation the arm-cpu runner records."""
    _expect(data.get("speedup") is None or _is_number(data["speedup"]), path, "speedup", "a number or null",
            data.get("speedup"))
    compare = data.get("compare")
    _expect(compare is None or isinstance(compare, dict), path, "compare", "a mapping or null", compare)
    compare = compare or {}
    _expect(compare.get("model") is None or isinstance(compare["model"], str), path, "compare.model", "a string",
            compare.get("model"))
    latency = compare.get("latency_ms")
    _expect(latency is None or isinstance(latency, dict), path, "compare.latency_ms", "a mapping", latency)
    for key, value in (latency or {}).items():
        _expect(value is None or _is_number(value), path, f"compare.latency_ms.{key}", "a number or null", value)
    for where, delegation in (("delegation", data.get("delegation")), ("compare.delegation", compare.get("delegation"))):
        _expect(delegation is None or isinstance(delegation, dict), path, where, "a mapping or null", delegation)
        delegation = delegation or {}
        _expect(delegation.get("partitions") is None or _is_number(delegation["partitions"]), path,
                f"{where}.partitions", "a number or null", delegation.get("partitions"))
        outside = delegation.get("outside")
        _expect(outside is None or isinstance(outside, dict), path, f"{where}.outside", "a mapping", outside)
        for op, count in (outside or {}).items():
            _expect(_is_number(count), path, f"{where}.outside (op counts)", "numbers", count)


def load_results(path: str | Path, role: str) -> dict:
    path = Path(path)
    what = "results" if role == "results" else f"{role} results"  # not 'results results' (report)
    data = read_json(path, what, "pass the results.json of a run.py run")
    return check_results(data, path, role)


def accuracy_values(results: dict, metrics) -> dict[str, float]:
    """{check name: value} for the requested accuracy metrics that the results contain."""
    accuracy = results.get("accuracy") or {}
    values = {}
    for metric in metrics:
        if metric in ("sqnr_db", "cosine", "exact_match"):  # per output (exact_match: integer outputs)
            for output, entry in sorted((accuracy.get("outputs") or {}).items()):
                if isinstance(entry, dict) and _is_number(entry.get(metric)):
                    values[f"accuracy.{metric}[{output}]"] = float(entry[metric])
        elif _is_number(accuracy.get(metric)):
            values[f"accuracy.{metric}"] = float(accuracy[metric])
        if metric == "argmax_agreement":
            values.update(output_agreements(results)[0])
    return values


def output_agreements(results: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Per-output argmax agreement of the outputs other than the classifier (whose figure is
    accuracy.argmax_agreement): ({check name: value}, {check name: why not compared}). A figure
    without `argmax_axis` on an output of more than one axis per sample predates the per-position
    rule (quantmath.class_axis): one argmax over the flattened sample, so it is never compared."""
    accuracy = results.get("accuracy") or {}
    values, skipped = {}, {}
    for output, entry in sorted((accuracy.get("outputs") or {}).items()):
        if output == accuracy.get("classifier_output") or not isinstance(entry, dict):
            continue
        if not _is_number(entry.get("argmax_agreement")):
            continue
        name, shape = f"accuracy.argmax_agreement[{output}]", entry.get("shape")
        if entry.get("argmax_axis") is None and isinstance(shape, list) and len(shape) > 1:
            skipped[name] = "an older run.py took one argmax over the flattened output"
        else:
            values[name] = float(entry["argmax_agreement"])
    return values, skipped


def _budget(budgets: RegressSettings, key: str) -> float:
    value = getattr(budgets, key)
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise UserError(f"regress budget {key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _require_finite_baseline(values: dict[str, float], where: str) -> None:
    """Fail closed: a NaN or infinite baseline figure would make every comparison pass or fail
    meaninglessly (an Infinity latency lets any candidate through)."""
    for name, value in values.items():
        if not math.isfinite(value) or (name.startswith("latency.") and value < 0):
            raise UserError(f"{where}: baseline {name} is {value}; a baseline must hold finite numbers, "
                            f"regenerate it with run.py")


def run_regression(baseline: dict, candidate: dict, budgets: RegressSettings | None = None,
                   baseline_name: str = "baseline") -> RegressionResult:
    """Compare two results.json dicts under `budgets` (the config's `regress:` section)."""
    budgets = budgets or RegressSettings()
    max_drop, max_sqnr_drop = _budget(budgets, "max_drop"), _budget(budgets, "max_sqnr_drop_db")
    max_increase = parse_increase(budgets.max_latency_increase)
    metrics = list(budgets.metrics or DEFAULT_METRICS)
    result = RegressionResult()

    base_acc, cand_acc = accuracy_values(baseline, metrics), accuracy_values(candidate, metrics)
    base_lat = {f"latency.{pct}": float(v) for pct, v in (baseline.get("latency_ms") or {}).items()
                if pct in LATENCY_PERCENTILES and _is_number(v)}
    _require_finite_baseline({**base_acc, **base_lat}, baseline_name)
    if not base_acc and not base_lat:
        raise UserError(f"{baseline_name}: the baseline holds no accuracy metric and no latency percentile; "
                        f"nothing to compare, pass the results.json of a complete run.py run")
    base_skipped, cand_skipped = output_agreements(baseline)[1], output_agreements(candidate)[1]
    if budgets.metrics:
        for metric in metrics:
            if not any(k == f"accuracy.{metric}" or k.startswith(f"accuracy.{metric}[") for k in base_acc):
                if metric == "argmax_agreement" and base_skipped:
                    raise UserError(f"{baseline_name}: its argmax agreement is an older run.py's argmax over the "
                                    f"flattened output ({one_line(', '.join(base_skipped))}); rerun the baseline's run.py "
                                    f"with this edgepipe, or leave argmax_agreement out of regress.metrics")
                raise UserError(f"regress metric '{metric}' is not in the baseline results; "
                                f"choose from top1, top5, argmax_agreement, ece, sqnr_db, cosine, exact_match")
    if "argmax_agreement" in metrics:
        for name, why in {**cand_skipped, **base_skipped}.items():
            role = baseline_name if name in base_skipped else "candidate"
            result.notes.append(f"{name} not compared: in the {role} {why}; rerun its run.py with this "
                                f"edgepipe for an agreement per position along the class axis")
    for name, base in base_acc.items():
        cand = cand_acc.get(name)
        if cand is None and name in cand_skipped:
            continue  # noted above
        lower_is_better = name == "accuracy.ece"
        budget = max_sqnr_drop if "sqnr_db" in name else max_drop
        if cand is None:
            result.checks.append(Check(name, "accuracy", base, None, f"drop <= {budget:g}", False,
                                       f"{name} is missing from the candidate"))
            continue
        drop = (cand - base) if lower_is_better else (base - cand)
        passed = drop <= budget + 1e-12
        word = "increase" if lower_is_better else "drop"
        result.checks.append(Check(name, "accuracy", base, cand, f"{word} <= {budget:g}", passed,
                                   "" if passed else f"{name} {word} {drop:.4g} exceeds {budget:g}"))

    cand_lat = candidate.get("latency_ms") or {}
    for pct in LATENCY_PERCENTILES:
        name = f"latency.{pct}"
        if name not in base_lat:
            continue
        base, cand = base_lat[name], cand_lat.get(pct)
        limit = f"increase <= {max_increase * 100:g}%"
        if cand is None:
            result.checks.append(Check(name, "latency", base, None, limit, False, f"{name} is missing from the candidate"))
            continue
        cand = float(cand) if _is_number(cand) else math.nan
        passed = cand <= base * (1.0 + max_increase) + 1e-12
        message = "" if passed else f"{name} {cand:.4g} ms is {(cand / base - 1) * 100 if base else math.inf:.1f}% above {base:.4g} ms"
        result.checks.append(Check(name, "latency", base, cand, limit, passed, message))

    base_dev, cand_dev = baseline.get("device") or {}, candidate.get("device") or {}
    for key in ("cpu", "gpu", "runtime", "threads"):
        if base_dev.get(key) != cand_dev.get(key):
            result.notes.append(f"device {key} differs ({base_dev.get(key)} vs {cand_dev.get(key)}): "
                                f"latency comparison may not be like for like")
    if not result.checks:
        result.notes.append("no metric is present in both results: nothing was compared")
    return result
