"""The mixed-precision table (benchmarks/results/precision_search.json), one row per build."""

from __future__ import annotations

from summarize_format import fmt


def precision_search(data: dict) -> list[str]:
    lines = [f"Host {data['host'].get('machine', '')}, {data['host'].get('note', '')}; one `edgepipe build` per row "
             "in a fresh process. Ops int8 / int16 / float: shares of the prepared ONNX graph's ops (README, "
             "Accuracy recovery: what counts as an int8 op); \"table ops\": float islands that XNNPACK runs as int8 "
             "lookup tables, counted int8 (rows built before commit 6941f67 counted them float). "
             "Load: the 1-minute load average at the row's start and end.", "",
             "| case (commit) | budget (levels) | extra config | ops int8 / int16 / float | float groups | "
             "search s (evaluations rank+int16 rank+search+confirm) | build s | load | result vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, case in data["cases"].items():
        for label, row in case["rows"].items():
            lines.append(_row(name, case, label, row))
    return lines


def _row(name: str, case: dict, label: str, row: dict) -> str:
    plan = row.get("precision")
    config = "; ".join(case.get("config", [])) or "-"
    load = row.get("loadavg")
    load_cell = f"{load['start'][0]:.1f} / {load['end'][0]:.1f}" if load else "-"
    head = f"| {name} `{label}` ({case.get('commit', '-')}) "
    if "error" in row:
        return head + f"| - | {config} | error: {row['error'][:80]} | - | - | {fmt(row.get('wall_s'))} | {load_cell} | - |"
    if plan is None:
        return head + f"| none | {config} | all int8 | 0 | - | {fmt(row['wall_s'], 1)} | {load_cell} | {_result(row)} |"
    levels = ", ".join(plan.get("levels") or ["int8", "float"])
    budget = f"{plan['budget']} ({levels})" + ("" if plan.get("met") else ", NOT met")
    tables = plan.get("int8_table_ops")
    shares = (f"{100 * plan['int8_fraction']:.1f}% / {100 * plan['int16_fraction']:.1f}% / "
              f"{100 * plan['float_fraction']:.1f}% ({plan['int8_ops']} / {plan['int16_ops']} / {plan['float_ops']} "
              f"of {plan['ops']}{f'; {tables} table ops' if tables else ''})")
    search = plan.get("search") or {}
    groups = f"{plan['float_groups']} of {search.get('groups', '-')}"
    prune = search.get("prune")
    if prune:
        groups += (f" (bisection {prune['groups_before']}, {prune['int8_ops_before']} ops int8; prune "
                   f"{prune['evaluations']} evaluations, {prune['seconds']:.0f} s)")
    evaluations = "+".join(str(plan["evaluations"].get(k) or 0) for k in ("ranking", "int16_ranking", "search", "confirm"))
    return (head + f"| {budget} | {config} | {shares} | {groups} | {fmt(plan['search_seconds'], 0)} ({evaluations}) "
            f"| {fmt(row['wall_s'], 1)} | {load_cell} | {_result(row)} |")


def _result(row: dict) -> str:
    litert = row.get("litert_vs_ort_fp32")
    if litert:
        parts = [f"step agreement {litert['step_agreement']:.3f}",
                 f"strings {litert['string_agreement']:.3f} ({litert['string_agreement_ignoring_spaces']:.2f})"]
        if litert.get("fp32_agreement") is not None:
            parts += [f"FP32 agreement {litert['fp32_agreement']:.3f}", f"char accuracy {litert['char_accuracy']:.3f}"]
        return ", ".join(parts + [f"{litert['sqnr_db']:.1f} dB"])
    host = row.get("host_accuracy") or {}
    if host.get("top1") is not None:
        return f"top-1 {host['top1']:.3f} (FP32 {fmt(host.get('fp32_top1'))})"
    return "-"
