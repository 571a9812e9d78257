"""Conformance harness for the TFLite backend's op lowerings (shared by every tests/test_tflite_ops_*.py).

One call, `check_conformance(model, tmp_path)`, does what every op test needs: calibrate the
model on structured inputs (min/max measured with ONNX Runtime), convert it to fp32 and int8
.tflite with `build_tflite`, run both in the real LiteRT interpreter under every resolver
(XNNPACK default, builtin kernels without delegates, reference kernels for int8) and compare
with ONNX Runtime: fp32 within `fp32_rtol` of the largest reference magnitude, int8 within
`int8_steps` output quantization steps of a Q/DQ simulation of the int8 model in ONNX Runtime
(per-channel int8-rounded weights; every activation the .tflite holds in int8 rounded to the grid
it should have: derived from the calibration ranges and TFLite's kernel rules, never read back
from the file under test, so a wrong scale in the file is a wrong number here).

Build small graphs with `make_model(nodes, inputs, outputs, initializers)`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph, quantmath, recurrent
from edgepipe.backends.tflite import build_tflite
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration


def make_model(nodes, inputs: dict, outputs: list[str], initializers: dict | None = None,
               opset: int = 17) -> onnx.ModelProto:
    """A float32 ONNX model from nodes, {input: shape}, output names and {name: array} constants."""
    graph_proto = helper.make_graph(
        nodes, "conformance",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in (initializers or {}).items()],
    )
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = graph.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


@functools.lru_cache(maxsize=1)
def _onnx_node_cases() -> dict:
    import warnings

    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        return {case.name: case for case in node_cases.collect_testcases(None)}


def onnx_node_case(name: str) -> tuple[onnx.ModelProto, dict, dict]:
    """(model, feed, expected outputs) of one of the ONNX package's backend node tests; inputs
    after the first (scales, sizes, weights) become initializers, as an exporter writes them."""
    case = _onnx_node_cases()[name]
    inputs, outputs = case.data_sets[0]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for info, value in list(zip(model.graph.input, inputs))[1:]:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
    del model.graph.input[1:]
    feed = {model.graph.input[0].name: np.asarray(inputs[0])}
    expected = {info.name: np.asarray(value) for info, value in zip(model.graph.output, outputs)}
    return graph.infer_shapes(model), feed, expected


def assert_onnx_case_fp32(name: str, folder: Path, tolerance: float) -> None:
    """The fp32 .tflite of a backend node test matches both its expected outputs and ONNX Runtime."""
    from edgepipe.backends.tflite import unsupported_nodes

    model, feed, expected = onnx_node_case(name)
    assert not unsupported_nodes(model)
    result = build_tflite(model, None, folder)
    got = run_tflite(folder / "model.fp32.tflite", result["io"], feed)
    reference = run_onnx(model, feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=tolerance)
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-5, atol=tolerance)


def structured_inputs(model: onnx.ModelProto, count: int = 8, seed: int = 0) -> list[dict]:
    """Image-like inputs: smooth low-frequency patterns plus noise (not pure white noise)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for info in graph.graph_inputs(model):
            shape = [int(d) for d in graph.tensor_shape(info)]
            base = rng.normal(size=shape).astype(np.float32)
            if len(shape) == 4 and shape[2] > 2 and shape[3] > 2:
                yy, xx = np.meshgrid(np.linspace(0, np.pi, shape[2]), np.linspace(0, np.pi, shape[3]), indexing="ij")
                phase = rng.uniform(0, np.pi, size=(shape[0], shape[1], 1, 1))
                base = np.sin(yy * rng.uniform(1, 3) + phase) * np.cos(xx * rng.uniform(1, 3)) + 0.3 * base
            feed[info.name] = base.astype(np.float32)
        feeds.append(feed)
    return feeds


def minmax_calibration(model: onnx.ModelProto, feeds: list[dict]) -> CalibrationResult:
    """Calibration ranges = observed min/max of every tensor over `feeds` (ONNX Runtime); recurrent
    nodes run unrolled, as `calibrate()` runs them (their per-step tensors get ranges)."""
    model = recurrent.unrolled(model)
    names = [i.name for i in graph.graph_inputs(model)] + [o for n in model.graph.node for o in n.output if o]
    session = graph.make_session(graph.expose_tensors(model, names))
    output_names = [o.name for o in session.get_outputs()]
    low = {name: np.inf for name in output_names}
    high = {name: -np.inf for name in output_names}
    for feed in feeds:
        for name, value in zip(output_names, session.run(None, feed)):
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
    for name in graph.graph_inputs(model):
        low[name.name] = min(low.get(name.name, np.inf), min(float(f[name.name].min()) for f in feeds))
        high[name.name] = max(high.get(name.name, -np.inf), max(float(f[name.name].max()) for f in feeds))
    tensors = {}
    unbounded = sorted(name for name in low if low[name] == -np.inf or high[name] == np.inf)  # a mask's -inf
    for name in low:
        if np.isfinite(low[name]) and np.isfinite(high[name]):
            lo, hi = min(low[name], 0.0), max(high[name], 0.0)
            tensors[name] = TensorCalibration(name, low[name], high[name], max(abs(lo), abs(hi), 1e-8), lo, hi,
                                              "minmax")
    result = CalibrationResult(tensors=tensors, method="minmax", num_samples=len(feeds), unbounded=unbounded)
    recurrent.share_step_ranges(result)  # as calibrate() does
    return result


def run_onnx(model: onnx.ModelProto, feed: dict) -> dict:
    session = graph.make_session(model)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def op_names(path: Path, resolver: str = "xnnpack") -> list[str]:
    """Operator names as the interpreter sees them ("DELEGATE" for nodes XNNPACK took)."""
    return [op["op_name"] for op in make_interpreter(path, resolver)._get_ops_details()]


def delegate_partitions(path) -> list[dict]:
    """DELEGATE nodes of the XNNPACK execution plan; asserts they cover input to output."""
    interpreter = make_interpreter(path, "xnnpack")
    interpreter.allocate_tensors()
    delegates = [op for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]
    if len(delegates) == 1:
        inputs = {d["index"] for d in interpreter.get_input_details()}
        outputs = {d["index"] for d in interpreter.get_output_details()}
        assert inputs <= set(delegates[0]["inputs"].tolist())
        assert outputs == set(delegates[0]["outputs"].tolist())
    return delegates


WEIGHT_AXES = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}


def batch_matmul_reads(path: Path) -> list[tuple[bool, list[int]]]:
    """(AdjY, B's shape) of every BATCH_MATMUL in a .tflite, from the flatbuffer."""
    from tflite.BatchMatMulOptions import BatchMatMulOptions
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.Model import Model

    model = Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    reads = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() != BuiltinOperator.BATCH_MATMUL:
            continue
        options = BatchMatMulOptions()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        reads.append((bool(options.AdjY()), graph.Tensors(op.Inputs(1)).ShapeAsNumpy().tolist()))
    return reads


def fake_quantized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` whose Conv/Gemm/MatMul weights went through per-channel int8 and back."""
    simulated = onnx.ModelProto()
    simulated.CopyFrom(model)
    initializers = {t.name: t for t in simulated.graph.initializer}
    for node in simulated.graph.node:
        if node.op_type == "Gemm":
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if transposed else 1
        elif node.op_type in WEIGHT_AXES:
            axis = WEIGHT_AXES[node.op_type]
        else:
            continue
        tensor = initializers.get(node.input[1])
        if tensor is None or len(tensor.dims) < 2:
            continue
        weights = numpy_helper.to_array(tensor)
        q, scales = quantmath.per_channel_symmetric(weights, axis)
        shape = [1] * weights.ndim
        shape[axis] = -1
        tensor.CopyFrom(numpy_helper.from_array(quantmath.dequantize(q, scales.reshape(shape)), tensor.name))
    return simulated


# TFLite int8 kernel rules that fix an output's (scale, zero point) whatever the calibration says
# (/work/shared/notes/tflite-int8-facts.md): the expected grid of these outputs is the rule's.
FIXED_OUTPUT_PARAMS = {"Sigmoid": (1.0 / 256, -128), "Tanh": (1.0 / 128, 0), "Softmax": (1.0 / 256, -128),
                       "LogSoftmax": (16.0 / 256, 127)}
# Ops whose int8 output must share its input's grid (data movement, max/min selection).
SHARES_INPUT_GRID = {"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Slice",
                     "Gather", "Split", "Resize", "Upsample", "ReduceMax", "ReduceMin"}


def expected_int8_params(model: onnx.ModelProto, calibration: CalibrationResult) -> dict[str, tuple[float, int]]:
    """(scale, zero point) every int8 activation SHOULD have, derived from the calibration ranges
    (TFLite's asymmetric int8 grid of [lo, hi]) and the kernel rules above; never read from the
    .tflite under test, so a wrong scale in the file shows up as a wrong number. Recurrent nodes
    count unrolled (edgepipe/recurrent.py), as the TFLite backend lowers them."""
    model = recurrent.unrolled(model)
    params = {name: calibration.asymmetric_params(name) for name in calibration.tensors}
    for node in model.graph.node:  # topological order: a shared grid is already known
        if node.op_type in FIXED_OUTPUT_PARAMS:
            params.update({out: FIXED_OUTPUT_PARAMS[node.op_type] for out in node.output if out})
        elif (node.op_type in SHARES_INPUT_GRID or _pads_with_zero(model, node)) and node.input[0] in params:
            params.update({out: params[node.input[0]] for out in node.output if out})
    return params


def _pads_with_zero(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """A Pad whose border is 0 (or mirrored) keeps its input's grid; a non-zero constant does not."""
    if node.op_type != "Pad":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return True
    value = attrs.get("value", 0.0)
    if len(node.input) > 2 and node.input[2]:
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        value = float(np.asarray(constants.get(node.input[2], np.nan)).reshape(-1)[0])
    return value == 0.0


def int8_tensor_names(interpreter) -> set[str]:
    """ONNX names of the activations the .tflite holds in int8 (which tensors, not their grids)."""
    names = set()
    for detail in interpreter.get_tensor_details():
        name, *tags = detail["name"].split(";")  # "x;int8;0231": the int8 copy of ONNX tensor x
        if detail["dtype"] == np.int8 and (not tags or tags[0] in ("int8", "internal")):
            names.add(name)
    return names


# ONNX Runtime's own QuantizeLinear/DequantizeLinear: the same per-tensor arithmetic at any opset of
# the model (ONNX's are missing below opset 10 and, in this ONNX Runtime, at the newest opsets)
QDQ_DOMAIN = "com.microsoft"


def qdq_reference(model: onnx.ModelProto, params: dict[str, tuple[float, int]]) -> onnx.ModelProto:
    """Copy of `model` where every tensor in `params` is rounded to that int8 grid with
    QuantizeLinear/DequantizeLinear: the Q/DQ simulation of the int8 model (recurrent nodes
    unrolled, so every per-step tensor is rounded as the .tflite rounds it)."""
    simulated = fake_quantized_weights(recurrent.unrolled(model))
    input_names = {i.name for i in graph.graph_inputs(simulated)}
    nodes, extra = [], []

    def qdq(source: str, target: str) -> list:
        scale, zero_point = params[target]
        extra.append(numpy_helper.from_array(np.array(scale, np.float32), f"{target}__scale"))
        extra.append(numpy_helper.from_array(np.array(zero_point, np.int8), f"{target}__zp"))
        return [helper.make_node("QuantizeLinear", [source, f"{target}__scale", f"{target}__zp"], [f"{target}__q"],
                                 domain=QDQ_DOMAIN),
                helper.make_node("DequantizeLinear", [f"{target}__q", f"{target}__scale", f"{target}__zp"], [target],
                                 domain=QDQ_DOMAIN)]

    renamed_inputs = {name: f"{name}__float" for name in input_names if name in params}
    for name, float_name in renamed_inputs.items():
        nodes += qdq(float_name, name)
    for node in simulated.graph.node:
        outputs = list(node.output)
        quantized = [o for o in outputs if o in params]
        for position, name in enumerate(outputs):
            if name in params:
                node.output[position] = f"{name}__raw"
        nodes.append(node)
        for name in quantized:
            nodes += qdq(f"{name}__raw", name)
    del simulated.graph.node[:]
    simulated.graph.node.extend(nodes)
    simulated.graph.initializer.extend(extra)
    for info in simulated.graph.input:
        if info.name in renamed_inputs:
            info.name = renamed_inputs[info.name]
    simulated.opset_import.append(helper.make_opsetid(QDQ_DOMAIN, 1))
    simulated.ir_version = max(simulated.ir_version, 4)  # IR 3 wants every initializer as a graph input
    return simulated


@dataclass
class Conformance:
    """What `check_conformance` measured (tests may assert more on it)."""

    result: dict
    calibration: CalibrationResult
    fp32_error: dict = field(default_factory=dict)  # resolver -> max |err| / max |ref|
    int8_steps: dict = field(default_factory=dict)  # resolver -> max |err| in output steps
    out_dir: Path | None = None


def convert(model: onnx.ModelProto, out_dir: Path, feeds: list[dict] | None = None, **options):
    feeds = feeds if feeds is not None else structured_inputs(model)
    calibration = minmax_calibration(model, feeds)
    return build_tflite(model, calibration, out_dir, options), calibration


def check_conformance(model: onnx.ModelProto, tmp_path: Path, feeds: list[dict] | None = None,
                      fp32_rtol: float = 1e-5, int8_steps: float = 2.0, samples: int = 3,
                      **options) -> Conformance:
    """Convert, run in LiteRT under each resolver, compare with ONNX Runtime; assert tolerances."""
    feeds = feeds if feeds is not None else structured_inputs(model)
    out_dir = Path(tmp_path) / "tflite"
    result, calibration = convert(model, out_dir, feeds, **options)
    report = Conformance(result, calibration, out_dir=out_dir)
    fp32_io = _fp32_io(result["io"])
    for resolver in ("xnnpack", "no_delegates"):
        interpreter = make_interpreter(out_dir / "model.fp32.tflite", resolver)
        worst = 0.0
        for feed in feeds[:samples]:
            expected = run_onnx(model, feed)
            got = run_tflite(out_dir / "model.fp32.tflite", fp32_io, feed, interpreter=interpreter)
            for name, value in expected.items():
                assert got[name].shape == value.shape, f"fp32 {resolver}: output '{name}' has shape " \
                    f"{got[name].shape}, ONNX Runtime's {value.shape}"  # the error below would broadcast
                scale = max(float(np.max(np.abs(value))), 1e-6)
                worst = max(worst, float(np.max(np.abs(got[name] - value))) / scale)
        report.fp32_error[resolver] = worst
        assert worst <= fp32_rtol, f"fp32 {resolver}: relative error {worst:.2e} > {fp32_rtol:.0e}"
    for resolver in ("xnnpack", "no_delegates", "reference"):
        worst = int8_error_steps(model, out_dir, result["io"], calibration, feeds[:samples], resolver)
        report.int8_steps[resolver] = worst
        assert worst <= int8_steps + 1e-3, f"int8 {resolver}: error {worst:.2f} output steps > {int8_steps}"
    return report


def int8_error_steps(model: onnx.ModelProto, out_dir: Path, io: dict, calibration: CalibrationResult,
                     feeds: list[dict], resolver: str = "reference") -> float:
    """Largest |int8 .tflite - Q/DQ simulation| over `feeds` and outputs, in output steps; the
    simulation's grids and the steps both come from `expected_int8_params`, not from the file."""
    path = Path(out_dir) / "model.tflite"
    interpreter = make_interpreter(path, resolver)
    expected_params = expected_int8_params(model, calibration)
    held = int8_tensor_names(interpreter)
    simulated = qdq_reference(model, {name: p for name, p in expected_params.items() if name in held})
    inputs = _input_names(simulated)
    worst = 0.0
    for feed in feeds:
        expected = run_onnx(simulated, {f"{k}__float" if f"{k}__float" in inputs else k: v for k, v in feed.items()})
        got = run_tflite(path, io, feed, interpreter=interpreter)
        for spec in io["outputs"]:
            step = expected_params[spec["name"]][0]
            worst = max(worst, float(np.max(np.abs(got[spec["name"]] - expected[spec["name"]]))) / step)
    return worst


def _input_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.input}


def _fp32_io(io: dict) -> dict:
    """The fp32 file has float I/O with the same names and layouts as the int8 file."""
    strip = lambda specs: [dict(s, dtype=s["dtype"] if s["dtype"] in ("int32", "bool") else "float32",  # noqa: E731
                                quantization=None) for s in specs]
    return {"inputs": strip(io["inputs"]), "outputs": strip(io["outputs"])}
