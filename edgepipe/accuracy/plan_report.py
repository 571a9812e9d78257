"""What a precision plan bought, in words and numbers: the int8 / int16 / float share of the ops,
the results.json `precision` section and the build's one line (kept apart from the search itself)."""

from __future__ import annotations

import onnx

from edgepipe import graph
from edgepipe.accuracy.placement import tensor_switch
from edgepipe.accuracy.sensitivity import VariantEvaluator


def int8_ops(model: onnx.ModelProto, evaluator: VariantEvaluator, float_nodes: set[str],
             int16_nodes: set[str] = frozenset()) -> dict:
    """How much of the model computes in int8 (and 16x8): ONNX nodes (Constant excluded) whose
    compute the target quantizes, minus the float ones, plus the float islands the target runs as
    an int8 lookup table where both their ends are int8 (`Placement.tables`, counted again in
    `int8_table_ops`); the rest of the ops are float."""
    compute = [n.name for n in model.graph.node if n.op_type != "Constant"]
    quantized = set(evaluator.qdq_report["quantized_nodes"]) if evaluator.placement is None \
        else set(evaluator.placement.int8_nodes)
    integer = (quantized & set(compute)) - set(float_nodes)
    int16 = len(integer & set(int16_nodes))
    tables = tabulated_nodes(model, evaluator, float_nodes, int16_nodes) & set(compute)
    int8 = len(integer) - int16 + len(tables)
    total = max(len(compute), 1)
    return {"ops": len(compute), "int8_ops": int8, "int8_fraction": round(int8 / total, 4),
            "int8_table_ops": len(tables),
            "int16_ops": int16, "int16_fraction": round(int16 / total, 4),
            "float_ops": len(compute) - int8 - int16, "float_fraction": round((len(compute) - int8 - int16) / total, 4)}


def tabulated_nodes(model: onnx.ModelProto, evaluator: VariantEvaluator, float_nodes: set[str],
                    int16_nodes: set[str] = frozenset(), islands: list | None = None) -> set[str]:
    """Nodes of the placement's lookup-table islands whose every outside input and output is on
    its int8 grid in this variant (an island that reads or writes float is a float computation;
    naming it float changes nothing, it is float in the file already). `islands`:
    `table_islands(evaluator)`, computed once by callers that count many variants."""
    islands = table_islands(evaluator) if islands is None else islands
    if not islands:
        return set()
    switches = evaluator.switchable.switches_for(float_nodes, int16_nodes)
    result = set()
    for unit, ends in islands:
        if all(tensor_switch(t) in switches for t in ends):
            result |= unit
    return result


def table_islands(evaluator: VariantEvaluator) -> list[tuple[set[str], set[str]]]:
    """(nodes, outside inputs and outputs) of each lookup-table island of the placement."""
    placement = evaluator.placement
    if placement is None or not placement.tables:
        return []
    index, emulated = evaluator.switchable.index, evaluator.model  # the graph the placement names
    nodes = {n.name: n for n in emulated.graph.node}
    outputs = {o.name for o in emulated.graph.output}
    islands = []
    for members in placement.tables.values():
        unit = set(members) & set(nodes)
        ends = {t for name in unit for t in nodes[name].input
                if t and index.producer.get(t) not in unit and graph.constant_value(emulated, t) is None}
        ends |= {t for name in unit for t in nodes[name].output
                 if set(index.readers.get(t, ())) - unit or t in outputs}
        if unit and ends:
            islands.append((unit, ends))
    return islands


def plan_summary(plan: dict) -> dict:
    """The results.json `precision` section (and the build's one line) from a precision.json dict:
    what the budget bought (int8 share of the ops, the float list) and what the search cost."""
    search = plan.get("search") or {}
    return {"budget": (plan.get("budget") or {}).get("text"), "met": plan.get("met"), "reason": plan.get("reason"),
            "ops": search.get("ops"), "int8_ops": search.get("int8_ops"), "int8_fraction": search.get("int8_fraction"),
            "int8_table_ops": search.get("int8_table_ops", 0),
            "int16_ops": search.get("int16_ops", 0), "int16_fraction": search.get("int16_fraction", 0.0),
            "float_ops": search.get("float_ops"), "float_fraction": search.get("float_fraction"),
            "levels": plan.get("levels", ["int8", "float"]),
            "float_nodes": plan.get("float_nodes", []), "float_groups": len(plan.get("float_groups", [])),
            "int16_nodes": plan.get("int16_nodes", []), "int16_groups": len(plan.get("int16_groups", [])),
            "search_seconds": search.get("seconds"),
            "evaluations": {key: search.get(f"{key}_evaluations")
                            for key in ("ranking", "int16_ranking", "search", "confirm")},
            "final": plan.get("final")}


def summary_line(summary: dict) -> str:
    """`budget met: 290/365 ops int8 (79.5%, 54 of them lookup tables), 20 int16 (5.5%), 55 float
    (15.1%); search 212 s, 377+0+12+1 evaluations (rank+int16 rank+search+confirm)`."""
    state = "budget met" if summary["met"] else "budget NOT met"
    if summary.get("ops") is None:
        return state
    evaluations = "+".join(str(summary["evaluations"].get(k) or 0)
                           for k in ("ranking", "int16_ranking", "search", "confirm"))
    float_ops = summary.get("float_ops")
    if float_ops is None:
        float_ops = summary["ops"] - summary["int8_ops"]
    tables = summary.get("int8_table_ops") or 0
    return (f"{state}: {summary['int8_ops']}/{summary['ops']} ops int8 ({100 * summary['int8_fraction']:.1f}%"
            f"{f', {tables} of them lookup tables' if tables else ''}), "
            f"{summary.get('int16_ops') or 0} int16 ({100 * (summary.get('int16_fraction') or 0):.1f}%), "
            f"{float_ops} float ({100 * float_ops / max(summary['ops'], 1):.1f}%); "
            f"search {summary['search_seconds']:.0f} s, {evaluations} evaluations "
            f"(rank+int16 rank+search+confirm)")
