"""Where int8 time goes, per op type, in corpus models built for arm-cpu: int8 against fp32 under
LiteRT's XNNPACK delegate, one thread.

Why: benchmarks/arm_speed.py gives each model's int8 / fp32 ratio, and LiteRT has no per-op
profiler for delegated graphs in Python. This times graph prefixes instead: for each tensor both
.tflite files of a bundle hold (they share tensor names), the model cut after the op that writes
it (every tensor the prefix makes and does not consume becomes an output, so nothing is dead);
the difference between consecutive prefixes is the cost of the ops between them. A segment is
named after the fp32 op that closes it, with the int8 ops it took (an int8 segment may hold a
decomposition, QUANTIZE / DEQUANTIZE of a float island, ...). Cuts after PAD are skipped: XNNPACK
folds a PAD into the conv that reads it, which a cut would prevent. So are cuts inside a float
island (before its closing QUANTIZE): XNNPACK turns DEQUANTIZE, a float unary op, QUANTIZE into
one int8 lookup table, which a float prefix output would prevent (it overstated GELU 5x). Prefix models alternate in
rounds; each figure is the median over rounds of the round's median thread CPU time per invoke
(less exposed to other work on a shared host than wall time). Differences of small ops are
noisy (some come out negative); sums per op type are what to read, `ranked_by_excess` orders
them by int8 - 0.5 x fp32 (what keeps the model from the goal), and `bound` is the ratio the model
would have if every op type but the first of them ran at 0.5x fp32 (for a model above the goal;
above 0.5, that op type alone keeps the model from it).

    python benchmarks/arm_op_profile.py [--models a,b] [--rounds 7]

Writes benchmarks/results/arm_op_profile.json (a `--models` subset updates only those rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.arm_speed import ARM_MODELS, build, chosen_models  # noqa: E402
from benchmarks.timing import cpu_features  # noqa: E402
from benchmarks.timing import load_average, rounds_argument  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter  # noqa: E402
from tests.realmodels import corpus  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "arm_op_profile.json"
# the models above or at 0.5x fp32 (1 thread) in results/arm_speed.json when profiled (issue 15)
DEFAULT_MODELS = ["timm_mobilenetv3", "ocr_cls", "timm_vit", "wake_melspec", "vad_if"]
NO_CUT_AFTER = {"PAD", "QUANTIZE", "DEQUANTIZE"}
ROUND_S = 0.05  # invocations per round: about this long for the full model
FIRST_CONV_CHANNELS = 4  # a CONV_2D reading at most this many channels: a network's first conv


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class Graph:
    """A .tflite file as the flatbuffer object API sees it, with op names and prefix writing."""

    def __init__(self, path: Path):
        schema = _schema()
        self.path, self.data = path, path.read_bytes()
        self.model = schema.ModelT.InitFromPackedBuf(self.data, 0)
        names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in self.model.operatorCodes]
        subgraph = self.model.subgraphs[0]
        self.tensors = subgraph.tensors
        self.ops = [(names[codes[op.opcodeIndex]], [int(t) for t in op.inputs], [int(t) for t in op.outputs])
                    for op in subgraph.operators]

    def tensor_name(self, index: int) -> str:
        return self.tensors[index].name.decode()

    def label(self, position: int) -> str:
        """The op type; a CONV_2D on a few input channels is told apart (XNNPACK pads them)."""
        opcode, inputs, _ = self.ops[position]
        if opcode == "CONV_2D" and int(self.tensors[inputs[0]].shape[-1]) <= FIRST_CONV_CHANNELS:
            return "CONV_2D (first, <= 4 input channels)"
        return opcode

    def write_prefix(self, count: int, path: Path) -> Path:
        """The first `count` ops; tensors they make and do not consume are the outputs."""
        import flatbuffers

        model = _schema().ModelT.InitFromPackedBuf(self.data, 0)
        subgraph = model.subgraphs[0]
        subgraph.operators = subgraph.operators[:count]
        consumed = {t for _, inputs, _ in self.ops[:count] for t in inputs}
        subgraph.outputs = [t for _, _, outputs in self.ops[:count] for t in outputs if t not in consumed]
        model.signatureDefs = None
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.write_bytes(builder.Output())
        return path


def cut_points(int8: Graph, fp32: Graph) -> list[tuple[int, int]]:
    """(int8 prefix length, fp32 prefix length) after each fp32 op whose output tensor the int8
    model also writes, in order on both sides, ending with both whole models."""
    written = {int8.tensor_name(outputs[0]): position + 1 for position, (_, _, outputs) in enumerate(int8.ops)}
    cuts, last = [], (0, 0)
    for position, (opcode, _, outputs) in enumerate(fp32.ops):
        cut = (written.get(fp32.tensor_name(outputs[0]), 0), position + 1)
        closes_island = cut[0] < len(int8.ops) and int8.ops[cut[0]][0] == "QUANTIZE"
        if opcode not in NO_CUT_AFTER and int8.ops[cut[0] - 1][0] not in NO_CUT_AFTER and \
                not closes_island and cut[0] > last[0] and cut[1] > last[1]:
            cuts.append(cut)
            last = cut
    whole = (len(int8.ops), len(fp32.ops))
    return cuts if cuts and cuts[-1] == whole else [*[c for c in cuts if c < whole], whole]


def cpu_medians(paths: list[Path], rounds: int) -> list[float]:
    """Median over rounds of each model's median thread CPU ms per invoke; models alternate."""
    interpreters = [make_interpreter(path, "xnnpack", 1) for path in paths]
    rng = np.random.default_rng(1)
    for interpreter in interpreters:
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(detail["dtype"]))
        interpreter.invoke()
    start = time.perf_counter()
    interpreters[-1].invoke()
    invocations = max(5, min(1000, int(ROUND_S / max(time.perf_counter() - start, 1e-6))))
    medians: list[list[float]] = [[] for _ in interpreters]
    for _ in range(rounds):
        for interpreter, per_round in zip(interpreters, medians):
            samples = []
            for _ in range(invocations):
                begin = time.thread_time()
                interpreter.invoke()
                samples.append(time.thread_time() - begin)
            per_round.append(statistics.median(samples))
    return [statistics.median(values) * 1000.0 for values in medians]


def profile(bundle: Path, rounds: int, work: Path) -> dict:
    int8, fp32 = Graph(bundle / "model.tflite"), Graph(bundle / "model.fp32.tflite")
    cuts = cut_points(int8, fp32)
    paths = [int8.write_prefix(i, work / f"int8_{i}.tflite") for i, _ in cuts] + \
            [fp32.write_prefix(f, work / f"fp32_{f}.tflite") for _, f in cuts]
    times = cpu_medians(paths, rounds)
    int8_ms, fp32_ms = times[:len(cuts)], times[len(cuts):]
    segments, by_op = [], {}
    previous = (0, 0, 0.0, 0.0)
    for (i, f), a, b in zip(cuts, int8_ms, fp32_ms):
        label = fp32.label(f - 1)
        shape = [int(d) for d in fp32.tensors[fp32.ops[f - 1][2][0]].shape]
        segment = {"fp32_ops": [op for op, _, _ in fp32.ops[previous[1]:f]],
                   "int8_ops": [op for op, _, _ in int8.ops[previous[0]:i]], "shape": shape,
                   "int8_us": round(1000 * (a - previous[2]), 2), "fp32_us": round(1000 * (b - previous[3]), 2)}
        segments.append(segment)
        entry = by_op.setdefault(label, {"segments": 0, "int8_us": 0.0, "fp32_us": 0.0})
        entry["segments"] += 1
        entry["int8_us"] += segment["int8_us"]
        entry["fp32_us"] += segment["fp32_us"]
        previous = (i, f, a, b)
    total_int8, total_fp32 = int8_ms[-1], fp32_ms[-1]
    for entry in by_op.values():
        entry["int8_us"], entry["fp32_us"] = round(entry["int8_us"], 2), round(entry["fp32_us"], 2)
        entry["int8_over_fp32"] = round(entry["int8_us"] / entry["fp32_us"], 3) if entry["fp32_us"] > 0 else None
        entry["share_of_int8"] = round(entry["int8_us"] / (1000 * total_int8), 3)
        # what this op type adds above half its fp32 time: the sum over types is int8 - 0.5 fp32
        entry["over_half_fp32_us"] = round(entry["int8_us"] - 0.5 * entry["fp32_us"], 2)
    ranked = sorted(by_op, key=lambda label: by_op[label]["over_half_fp32_us"], reverse=True)
    top = by_op[ranked[0]]
    # the model's ratio if every other op type ran at exactly 0.5x its fp32 time: above 0.5, the
    # top op type alone keeps the model from the goal whatever the lowering does elsewhere (only
    # for a model above the goal: below it, the top "excess" is noise of tiny segments)
    bound = None if total_int8 <= 0.5 * total_fp32 else round(
        (top["int8_us"] + 0.5 * (1000 * total_fp32 - top["fp32_us"])) / (1000 * total_fp32), 3)
    return {"total_ms": {"int8": round(total_int8, 4), "fp32": round(total_fp32, 4),
                         "int8_over_fp32": round(total_int8 / total_fp32, 3)},
            "by_op": by_op, "ranked_by_excess": ranked,
            "bound": bound and {"op": ranked[0], "ratio_if_other_ops_at_half": bound}, "segments": segments}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"subset of: {','.join(ARM_MODELS)}")
    parser.add_argument("--rounds", type=rounds_argument, default=7, help="alternating rounds (median), >= 3")
    args = parser.parse_args()
    names = chosen_models(parser, args.models)
    corpus.fetch_all()
    rows = json.loads(RESULTS.read_text()).get("models", {}) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="arm-op-profile-") as tmp:
        for name in names:
            load_start = load_average()
            bundle, row = build(name, Path(tmp))
            if bundle is not None:
                work = Path(tmp) / name / "prefixes"
                work.mkdir()
                row.update(profile(bundle, args.rounds, work))
            row["loadavg"] = {"start": load_start, "end": load_average()}
            rows[name] = row
            print(name, json.dumps({k: row.get(k) for k in ("total_ms", "bound", "loadavg", "error")}), flush=True)
            for label in row.get("ranked_by_excess", [])[:5]:  # where int8 exceeds half its fp32 time most
                print(f"  {label}: {json.dumps(row['by_op'][label])}", flush=True)
    import ai_edge_litert

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"host": cpu_features(), "litert": getattr(ai_edge_litert, "__version__", "?"),
                                   "threads": 1, "rounds": args.rounds, "timer": "thread CPU time",
                                   "models": rows}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
