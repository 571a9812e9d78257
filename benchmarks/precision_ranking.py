"""How the mixed-precision search's ranking decides the recognizer's float set, and what it costs.

Why: the planner floats the shortest prefix of a ranked list that meets the budget (bisection on
LiteRT), so the order decides how many ops stay int8. This stops a real `edgepipe build` of the
PP-OCRv4 recognizer (arm-cpu, the data of precision_search.py) at its precision stage, with the
model, calibration and bias corrections the planner gets there, ranks the groups once (each
alone, 2 lines, the switchable emulation) and bisects `precision.budget: {max_sequence_drop: N}`
on LiteRT under several orders (no prune):

- sqnr: lowest output SQNR alone first (the planner up to commit 8c0915b);
- reading_sqnr: groups that alone change a reading first, then SQNR (the planner's order now);
- reading_ratio / ratio: the same, or alone, by output noise power (10^(-SQNR/10)) per int8 op
  the group takes away (its int8 nodes and the lookup-table islands it leaves with a float end).

Recorded: the all-int8 count with the lookup-table islands counted int8 and float, and per order
the prefix, its int8 ops and every bisection step (prefix length, budgeted drop, holds).
`--recount` only recounts the float lists of precision_search.json's recognizer rows on this
graph (237 groups) with the current definition of an int8 op, next to what each row reported,
and records what a per-step budget bounds on these lines: one flipped step changes a greedy CTC
reading by at most 2 edits, so a per-step drop d bounds the mean reading drop by about
2 T mean(1/L) d (T steps, L characters of FP32's reading).

Run: python benchmarks/precision_ranking.py [--budget 0.015] [--orders sqnr,reading_sqnr,...] [--recount]
Writes benchmarks/results/precision_ranking.json (`--recount`: its `recounted` entry only).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from precision_search import CALIB_SEED, EVAL_SEED  # noqa: E402
from timing import load_average  # noqa: E402


class Stop(Exception):
    """Raised by the precision stage hook once the study is done (the build writes nothing)."""


def orders(metric: str, costs: dict) -> dict:
    def reading(only):
        return only.sequence_agreement if metric == "sequence" and only.sequence_agreement is not None else 1.0

    def noise(only):
        return 0.0 if only.sqnr_db is None or math.isinf(only.sqnr_db) else 10 ** (-only.sqnr_db / 10)

    def ratio(n):
        return -noise(n.only) / max(costs[n.group.name], 1)

    return {"sqnr": lambda n: (n.only.sqnr_db,),
            "reading_sqnr": lambda n: (reading(n.only), n.only.sqnr_db),
            "reading_ratio": lambda n: (reading(n.only), ratio(n)),
            "ratio": lambda n: (ratio(n),)}


def recount(model, calibration, dataset, target) -> dict:
    """Each precision_search.json recognizer plan of this graph counted with today's definition."""
    from edgepipe.accuracy.plan_report import int8_ops
    from edgepipe.accuracy.sensitivity import VariantEvaluator

    evaluator = VariantEvaluator(model, calibration, dataset, target=target, max_samples=1, use_placement=True)
    search = json.loads((ROOT / "benchmarks" / "results" / "precision_search.json").read_text())
    result = {}
    for name, case in search["cases"].items():
        for label, row in case["rows"].items():
            plan = row.get("precision") or {}
            if name.startswith("recognizer") and (plan.get("search") or {}).get("groups") == len(evaluator.groups()):
                result[f"{name}/{label}"] = {"commit": case.get("commit"), "reported_int8_ops": plan["int8_ops"],
                                             **int8_ops(model, evaluator, set(plan["float_nodes"]))}
    return result


def ctc_bound(model, dataset) -> dict:
    """T, FP32's reading lengths on the eval lines and the per-step -> reading factor 2 T mean(1/L)."""
    from edgepipe import graph

    session = graph.make_session(model)
    name = model.graph.output[0].name
    lengths, steps = [], 0
    for i in range(len(dataset)):
        logits = session.run([name], dataset.sample(i))[0][0]  # [T, C]
        labels = logits.argmax(-1)
        steps = len(labels)
        lengths.append(sum(1 for t, c in enumerate(labels) if c != 0 and (t == 0 or labels[t - 1] != c)))
    inverse = float(np.mean([1.0 / max(n, 1) for n in lengths]))
    return {"steps": steps, "lines": len(lengths), "mean_length": float(np.mean(lengths)),
            "mean_inverse_length": inverse, "factor": 2 * steps * inverse}


def study(model, calibration, dataset, settings, target, chosen: list[str]) -> dict:
    from edgepipe.accuracy import precision as planner
    from edgepipe.accuracy.plan_report import int8_ops, table_islands, tabulated_nodes
    from edgepipe.accuracy.sensitivity import VariantEvaluator

    started = time.perf_counter()
    evaluator = VariantEvaluator(model, calibration, dataset, target=target, max_samples=64, use_placement=True)
    budget = planner.Budget.parse(settings["precision"].budget, "auto", False)
    report = planner.rank_groups(evaluator, budget.metric)
    islands = table_islands(evaluator)
    compute = {n.name for n in model.graph.node if n.op_type != "Constant"}
    quantized = set(evaluator.placement.int8_nodes) & compute
    all_tables = tabulated_nodes(model, evaluator, set(), islands=islands) & compute
    costs = {n.group.name: len(quantized & set(n.group.nodes))
             + len(all_tables - tabulated_nodes(model, evaluator, set(n.group.nodes), islands=islands))
             for n in report.nodes}
    all_int8 = int8_ops(model, evaluator, set())
    result = {"groups": len(report.nodes), "rank_seconds": round(time.perf_counter() - started, 1),
              "all_int8": all_int8, "all_int8_tables_as_float": all_int8["int8_ops"] - all_int8["int8_table_ops"],
              "orders": {}}
    backend = planner._cached(target.evaluator(model, calibration, dataset, settings.get("backend") or {}))
    for name, key in orders(budget.metric, costs).items():
        if name not in chosen:
            continue
        started = time.perf_counter()
        ranked = [n.group for n in sorted(report.nodes, key=key)]
        search = planner._Planner(ranked, budget, backend, backend, "backend", None, "backend")
        prefix = [] if search.check([], "int8", None) else search.bisect()
        result["orders"][name] = {
            "prefix_groups": len(prefix), "prefix": prefix, **int8_ops(model, evaluator, search.nodes(prefix)),
            "steps": [{"prefix": len(s.float_groups), "measured": round(s.measured, 5), "holds": s.holds}
                      for s in search.steps],
            "seconds": round(time.perf_counter() - started, 1)}
        print(name, json.dumps({k: v for k, v in result["orders"][name].items() if k not in ("prefix", "steps")}),
              flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.015, help="max_sequence_drop")
    parser.add_argument("--orders", default="sqnr,reading_sqnr,reading_ratio,ratio")
    parser.add_argument("--recount", action="store_true", help="only recount precision_search.json's plans")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision_ranking.json")
    args = parser.parse_args(argv)
    from edgepipe import build
    from edgepipe.settings import resolve_settings

    name = "ocr_rec"
    spec = real_models.MODELS[name]
    found: dict = {}

    def hook(model, calibration, dataset, settings, target):
        if args.recount:
            found["recounted"] = recount(model, calibration, dataset, target)
            found["ctc_bound"] = ctc_bound(model, dataset)
        else:
            found.update(study(model, calibration, dataset, settings, target, args.orders.split(",")))
        raise Stop()

    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="precision_ranking_") as tmp:
        work = Path(tmp)
        np.savez(work / "calib.npz", **{spec.input_name: real_models.make_inputs(name, 64, CALIB_SEED)["x"]})
        np.savez(work / "eval.npz", **{spec.input_name: real_models.make_inputs(name, 200, EVAL_SEED)["x"]})
        config = work / "edgepipe.yaml"
        config.write_text("\n".join([
            f"model: {real_models.raw_model_path(name)}", "target: arm-cpu", f"calib: {work / 'calib.npz'}",
            f"eval: {work / 'eval.npz'}", f"input_shapes: {{{spec.input_name}: {list(spec.shape)}}}",
            "report: {host: false}", f"cache_dir: {work / 'cache'}",
            f"precision: {{budget: {{max_sequence_drop: {args.budget}}}}}"]) + "\n")
        settings, origin = resolve_settings({"out": str(work / "out")}, str(config))
        build.plan_precision = hook  # the build's own prepared model and calibration, then the study
        try:
            build.run_build(settings, origin)
        except Stop:
            pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if args.recount:
        report = json.loads(args.out.read_text()) if args.out.exists() else {}
        report["recounted"] = {"commit": commit.stdout.strip(), "plans": found["recounted"]}
        report["ctc_bound"] = found["ctc_bound"]
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
        return
    report = {"schema": 1, "host": {"machine": platform.machine(), "python": platform.python_version(),
                                    "loadavg": {"start": load_start, "end": load_average()}},
              "model": f"{real_models.package(name)} {spec.source}", "budget": {"max_sequence_drop": args.budget},
              "commit": commit.stdout.strip(), **found}
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
