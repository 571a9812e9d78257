"""Which int8 ops XNNPACK takes: predicted from builtins.py's measured table, measured on a file.

An op XNNPACK rejects runs on LiteRT's builtin kernels: correct, but slower, and it splits the
delegated graph into partitions with int8 tensors handed across. Users see this three ways: the
build names those ops in one line (measured on the written file with the host's LiteRT), the
host report records partitions next to the int8 / fp32 latencies, and `edgepipe inspect --target
arm-cpu` predicts it before any calibration (lowering with placeholder ranges; the ops a model
lowers to do not depend on the ranges, except an ADD whose scale ratio XNNPACK refuses).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from edgepipe.backends.tflite.builtins import builtin
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration

BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")  # conversions XNNPACK takes (float I/O, float islands)
INDEX_DTYPES = {"int32", "int64", "bool"}  # integer index math and masks: XNNPACK takes none of it (builtin kernels)


def kernel_histogram(spec) -> dict[str, dict[str, int]]:
    """{"int8": {op: count}, "float32": {op: count}}, plus "int16" when the model has 16x8 ops:
    which kernel each operator of `spec` runs (int16 when any tensor it touches is int16, else int8
    when one is int8; QUANTIZE / DEQUANTIZE count as int8 or int16), plus "int32" for integer index
    arithmetic (a table lookup's clamp of token ids)."""
    counts: dict[str, Counter] = {"int8": Counter(), "float32": Counter(), "int16": Counter(), "int32": Counter()}
    for op in spec.operators:
        dtypes = {spec.tensors[i].dtype for i in [*op.inputs, *op.outputs] if i >= 0}
        kind = "int16" if "int16" in dtypes else "int8" if "int8" in dtypes else \
            "int32" if dtypes and dtypes <= INDEX_DTYPES else "float32"
        counts[kind][op.opcode] += 1
    return {kind: dict(sorted(counter.items())) for kind, counter in counts.items()
            if counter or kind not in ("int16", "int32")}


def predicted_outside(kernels: dict[str, dict[str, int]]) -> dict:
    """{"outside": {op: count}, "unmeasured": [op]} for a kernel histogram: `outside` holds the ops
    whose row in builtins.py says XNNPACK rejects that kernel (int8 or float32), `unmeasured`
    those with no measurement (TRANSPOSE, RELU, ...: usually taken, not promised)."""
    outside: Counter = Counter()
    unmeasured = set()
    for kind, histogram in kernels.items():
        for opcode, count in histogram.items():
            row = builtin(opcode)
            known = None if row is None else row.xnnpack_int8 if kind == "int8" else row.xnnpack_fp32
            if kind in ("int16", "int32"):
                known = False  # XNNPACK has no 16x8 kernel and no integer arithmetic: builtin kernels
            if known is False:
                outside[opcode] += count
            elif known is None and opcode not in BOUNDARY_OPS:
                unmeasured.add(opcode if kind == "int8" else f"{opcode} (float)")
    return {"outside": dict(sorted(outside.items())), "unmeasured": sorted(unmeasured)}


def placeholder_calibration(model: onnx.ModelProto) -> CalibrationResult:
    """Range [-1, 1] for every tensor: enough to choose the int8 ops, not to run them."""
    names = [i.name for i in model.graph.input] + [o for node in model.graph.node for o in node.output if o]
    tensors = {name: TensorCalibration(name, -1.0, 1.0, 1.0, -1.0, 1.0, "placeholder") for name in names}
    return CalibrationResult(tensors=tensors, method="placeholder", num_samples=0)


def predict(model: onnx.ModelProto, options: dict | None = None) -> dict:
    """Predicted delegation of the int8 model `model` lowers to (no calibration needed)."""
    from edgepipe.backends.tflite.build import lower_model

    ctx = lower_model(model, placeholder_calibration(model), dict(options or {}), quantized=True)
    kernels = kernel_histogram(ctx.spec)
    return {"kernels": kernels, "float_nodes": list(ctx.float_lowered), **predicted_outside(kernels)}


def measure(path: Path, threads: int = 1) -> dict | None:
    """{"partitions": DELEGATE nodes, "outside": {op: count}} of a .tflite in the host's LiteRT
    (XNNPACK by default), or None when the interpreter is not installed here or cannot load it
    (the host report then names the problem; the build itself does not depend on this)."""
    try:
        from edgepipe.backends.tflite.runtime import make_interpreter

        interpreter = make_interpreter(Path(path), "xnnpack", threads)
        return partitions(interpreter._get_ops_details())
    except (ImportError, RuntimeError, ValueError, AttributeError):  # no LiteRT here, or it refused
        return None


def partitions(ops: list[dict]) -> dict:
    """Partitions and outside ops from the interpreter's node list: the model's ops, then one
    DELEGATE node per partition. An op belongs to a partition when it is reached walking back from
    the partition's outputs without crossing its inputs. (The bundle's runner_tflite.py.j2 does
    the same walk: the bundle cannot import edgepipe.)"""
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    model_ops = {op["index"]: op for op in ops if op["op_name"] != "DELEGATE"}
    producer = {int(t): index for index, op in model_ops.items() for t in op["outputs"]}
    inside: set[int] = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        pending = [int(t) for t in delegate["outputs"]]
        while pending:
            tensor = pending.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in inside:
                continue
            inside.add(index)
            pending.extend(int(t) for t in model_ops[index]["inputs"] if t >= 0)
    outside = Counter(op["op_name"] for index, op in model_ops.items() if index not in inside)
    return {"partitions": len(delegates), "outside": dict(sorted(outside.items()))}


def fully_delegated(measured: dict | None) -> bool:
    """One XNNPACK partition and no op on the builtin kernels: the goal for an int8 arm-cpu model
    (LiteRT 2.3 takes the float input QUANTIZE and output DEQUANTIZE into the partition too)."""
    return bool(measured) and measured["partitions"] == 1 and not measured["outside"]


def summary_line(measured: dict | None, int16_ops: int = 0) -> str:
    """One line for the build output: partitions and the ops left on the builtin kernels (with
    16x8 ops: all of those, since XNNPACK takes no int16 kernel)."""
    if measured is None:
        return "XNNPACK delegation not measured (no LiteRT on this host)"
    if int16_ops:
        return f"{summary_line(measured)} ({int16_ops} int16 ops: XNNPACK does not delegate 16x8, expected)"
    partitions = measured["partitions"]
    text = f"XNNPACK int8: {partitions} partition{'s' if partitions != 1 else ''}"
    if measured["outside"]:
        ops = ", ".join(f"{op} x{count}" for op, count in measured["outside"].items())
        return f"{text}; on builtin kernels: {ops}"
    return f"{text}; no op on builtin kernels"
