"""The accuracy tables of `summarize.py` (issue 14's goals, the recognizer's int8 noise floor and
its flipped time steps): rendered from accuracy_goals.json, int8_noise_floor.json, flip_margins.json.

Why a module of its own: these three share the recognizer's row names and metric cells, and
summarize.py stays a list of sections.
"""

from __future__ import annotations

from summarize_format import fmt

GOAL_ROWS = {"rec_arm": "PP-OCRv4 recognizer, arm-cpu int8 .tflite", "rec_jetson": "PP-OCRv4 recognizer, jetson Q/DQ "
             "in ONNX Runtime (host emulation)", "yolo": "YOLOv8n (NudeNet 320n), arm-cpu int8 .tflite",
             "det": "PP-OCRv4 DBNet detector, arm-cpu int8 .tflite"}
SIDE_METRICS = {"fp32_agreement": "fp32_agreement_ignoring_spaces", "char_accuracy": "char_accuracy_ignoring_spaces"}


def accuracy_goals(data: dict) -> list[str]:
    """Issue 14's accuracy goals: default build, each lever, and the ORT peer, per row."""
    lines = [f"Protocol: {data.get('protocol', '')}; host {data['host'].get('machine', '')}, "
             f"{data['host'].get('cpus')} cores. Values in brackets ignore spaces; a lever column is a build with that "
             f"edgepipe.yaml (stored with the row); `previous_defaults` turns off what is on by default since "
             f"the defaults change (fold.split_before_concat, calibration.bias_correction: auto, "
             f"backend.share_concat_scales / float_output_concats on arm-cpu).", "",
             "| " + " | ".join(["model", "metric", "goal", "default"] + [f"`{t}`" for t in _lever_tags(data)] +
                               ["ORT quantize_static MinMax"]) + " |",
             "|---|---|---|---|" + "---|" * len(_lever_tags(data)) + "---|"]
    for row, entry in data["rows"].items():
        for goal in entry.get("goals", []):
            metric = goal["metric"]
            cells = [_goal_cell(entry.get("default", {}), metric)]
            cells += [_goal_cell(entry.get("levers", {}).get(t, {}), metric) for t in _lever_tags(data)]
            cells.append(_goal_cell(entry.get("peer", {}), metric))
            fp32 = entry.get("default", {})
            label = (f"{metric} (FP32 {fmt(fp32.get('fp32_char_accuracy'))} ({fmt(fp32.get('fp32_char_accuracy_ignoring_spaces'))}))"
                     if metric == "char_accuracy" else metric)
            if metric == "transpose_ops":
                label += f" (ONNX Transpose {entry.get('onnx_transpose_nodes')})"
            lines.append(f"| {GOAL_ROWS.get(row, row)} | {label} | {goal['goal']} | " + " | ".join(cells) + " |")
    for row, metrics in EXTRA_METRICS.items():
        entry = data["rows"].get(row)
        if entry:
            runs = {"default": entry.get("default", {}), **entry.get("levers", {}), "ORT": entry.get("peer", {})}
            for metric in metrics:
                values = ", ".join(f"{tag} {_goal_cell(r, metric)}" for tag, r in runs.items() if metric in r)
                lines.append(f"- {GOAL_ROWS[row]}, {metric}: {values}")
    return lines


EXTRA_METRICS = {"yolo": ["score_sqnr_db", "box_sqnr_db", "quantize_ops"],
                 "rec_arm": ["line_agreement", "step_agreement", "logit_sqnr_db", "sqnr_db"],
                 "rec_jetson": ["fp32_agreement", "step_agreement", "logit_sqnr_db", "sqnr_db"]}


def _lever_tags(data: dict) -> list[str]:
    tags: list[str] = []
    for entry in data["rows"].values():
        tags += [t for t in entry.get("levers", {}) if t not in tags]
    return sorted(tags, key=lambda t: t == "all")  # the combination last


def _goal_cell(result: dict, metric: str) -> str:
    value = result.get(metric)
    if value is None:
        return "-"
    digits = 1 if metric.endswith("_db") else (0 if metric.endswith("_ops") else 3)
    text = fmt(value, digits) if isinstance(value, float) else str(value)
    side = result.get(SIDE_METRICS.get(metric, ""))
    return text + (f" ({fmt(side)})" if side is not None else "")


def int8_noise_floor(data: dict) -> list[str]:
    """Spread of the recognizer's reading metrics under threshold jitter and calibration draws."""
    lines = [f"sigma {data.get('sigma')} (threshold jitter), {data.get('calib_samples')} calibration / "
             f"{data.get('eval_samples')} eval lines", "",
             "| target | perturbation | variants | metric | default | min | max | std |", "|---|---|---|---|---|---|---|---|"]
    for target, entry in data.get("targets", {}).items():
        for kind in ("threshold_jitter", "calibration_draws"):
            if kind not in entry:
                continue
            for metric, spread in entry[kind]["spread"].items():
                digits = 2 if metric.endswith("_db") else 4
                lines.append(f"| {target} | {kind} | {len(entry[kind]['variants'])} | {metric} | "
                             f"{fmt(entry['default'][metric], digits)} | {fmt(spread['min'], digits)} | "
                             f"{fmt(spread['max'], digits)} | {fmt(spread['std'], digits)} |")
    return lines


def flip_margins(data: dict) -> list[str]:
    """FP32 margins and kinds of the time steps int8 flips on the recognizer."""
    lines = ["| target | flipped steps | lines reading changed | span-edge flips | median margin flipped (all steps) "
             "| flips below 1 nat | kinds |", "|---|---|---|---|---|---|---|"]
    for target, r in data.get("targets", {}).items():
        kinds = ", ".join(f"{k} {v}" for k, v in r.get("flips_by_kind", {}).items())
        lines.append(f"| {target} | {r['flipped_steps']} of {r['steps']} | {r['lines_reading_changed']} of {r['lines']} "
                     f"| {r['span_edge_flips']} | {fmt(r['margin_percentiles_flipped'].get('50'), 2)} "
                     f"({fmt(r['margin_percentiles_all_steps'].get('50'), 2)}) "
                     f"| {fmt(r['share_of_flips_below_margin'].get('1.0'), 2)} | {kinds} |")
    return lines
