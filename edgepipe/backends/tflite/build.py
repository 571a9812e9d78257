"""`build_tflite`: ONNX model + calibration -> model.tflite (int8) and model.fp32.tflite.

Both files come from the same lowering (`lower.Lowering`), once in float32 and once quantized,
so they share layout and tensor names. Each is validated (`validator.validate`) before anything
is written; an unsupported node raises `UnsupportedOpError` before the first file exists.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgepipe import graph
from edgepipe.backends import support
from edgepipe.backends.tflite import ops, validator, writer
from edgepipe.backends.tflite.delegation import kernel_histogram
from edgepipe.backends.tflite.lower import BACKEND, Lowering, ShapeUnknownError, prepare_model
from edgepipe.backends.tflite.model_io import describe_io
from edgepipe.backends.tflite.ops.encoding import table_lookup_matmuls
from edgepipe.calibrate.bias_correction import apply_bias_corrections
from edgepipe.errors import UnsupportedOpError, UserError

INT8_FILE = "model.tflite"
FP32_FILE = "model.fp32.tflite"


def unsupported_nodes(model: onnx.ModelProto, target: str = BACKEND) -> list[tuple[str, str, str]]:
    """(node name, op type, reason) for every node the TFLite backend cannot lower.

    Operators come first (custom domains, control flow, opsets; subgraphs included) and need no
    shapes; the per-node checks of registered lowerings then run on the top-level graph. A check
    that needs a shape a dynamic input leaves unknown says so ("needs static shapes") instead of
    guessing: the build fixes the shapes first and checks again."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    graph.ensure_node_names(named)
    problems = support.unsupported_operators(named, ops.registry(), target)
    listed = {name for name, _, _ in problems}
    ctx = Lowering(prepare_model(named), options={"target": target})
    dynamic = [i.name for i in graph.graph_inputs(named) if not graph.is_static(graph.declared_shape(i))]
    for node in ctx.model.graph.node:
        if node.op_type == "Constant" or node.name in listed:
            continue
        try:
            reason = ctx.unsupported_reason(node)
        except ShapeUnknownError as exc:
            reason = (f"needs static shapes: pass --input-shape {dynamic[0]}:1x... (tensor '{exc.tensor}' is "
                      "dynamic)" if dynamic else str(exc))
        except UserError as exc:
            reason = str(exc)
        if reason:
            problems.append((node.name, node.op_type, reason))
    return problems


def check_supported(model: onnx.ModelProto, target: str = BACKEND) -> None:
    """Raise UnsupportedOpError (naming `target`) for the first node that cannot be lowered."""
    problems = unsupported_nodes(model, target)
    if problems:
        name, op_type, reason = problems[0]
        raise UnsupportedOpError(name, op_type, target, reason)


def lower_model(model: onnx.ModelProto, calibration, options: dict, quantized: bool) -> Lowering:
    """Run the lowering and the validator; returns the context (spec, float nodes, io). The int8
    lowering applies the calibration's bias corrections; the float one keeps the model's biases."""
    if quantized and calibration is not None:
        corrections = getattr(calibration, "bias_corrections", None)
        if options.get("activations") == "int16":  # measured on int8 grids: not for a 16x8 model
            corrections = None
        skip = set(options.get("float_nodes") or ()) | set(options.get("int16_nodes") or ())
        model = apply_bias_corrections(model, corrections, skip=skip | table_lookup_matmuls(model))
    ctx = Lowering(prepare_model(model), calibration, options, quantized)
    ctx.run()
    validator.validate(ctx.spec)
    return ctx


def build_tflite(model: onnx.ModelProto, calibration, out_dir: Path, options: dict | None = None) -> dict:
    """Write model.tflite (int8; only with a calibration) and model.fp32.tflite into out_dir."""
    options = dict(options or {})
    check_supported(model, str(options.get("target") or BACKEND))
    fp32 = lower_model(model, None, options, quantized=False)
    int8 = lower_model(model, calibration, options, quantized=True) if calibration is not None else None
    fp32_bytes = writer.serialize(fp32.spec)
    int8_bytes = writer.serialize(int8.spec) if int8 is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if int8_bytes is not None:
        (out_dir / INT8_FILE).write_bytes(int8_bytes)
        files.append(INT8_FILE)
    (out_dir / FP32_FILE).write_bytes(fp32_bytes)
    files.append(FP32_FILE)
    main = int8 if int8 is not None else fp32
    return {
        "files": files,
        "io": describe_io(main),
        "float_nodes": list(int8.float_lowered) if int8 is not None else [],
        "int16_nodes": list(int8.int16_lowered) if int8 is not None else [],
        "int16_fallback": list(int8.int16_fallback) if int8 is not None else [],
        "wide_range": {k.removesuffix(";2d"): round(v, 4) for k, v in sorted(int8.wide_range.items())}
        if int8 is not None else {},
        "long_recurrences": dict(sorted(int8.long_recurrences.items())) if int8 is not None else {},
        "op_histogram": main.spec.op_histogram(),
        "kernels": kernel_histogram(main.spec),
    }

