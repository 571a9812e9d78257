"""The ONNX package's own backend tests as the conformance oracle, driven through the CLI.

Cases come from the onnx wheel as shipped: `onnx.backend.test.case.node.collect_testcases()`
(the node tests, with their inputs and numpy-reference outputs) and the model folders
`pytorch-converted`, `pytorch-operator` and `simple` (`model.onnx` + `test_data_set_*/*.pb`).
A case is *claimed* by a target when the target's op table covers every node's operator
(domain, op type, opset; subgraphs included); each claimed case is built with `edgepipe build`
exactly as shipped (the case's model file, its input tensors as the calibration and eval `.npz`,
one sample each, see `sample_form`), then judged against the case's own expected outputs:

- arm-cpu fp32 .tflite: |got - expected| <= atol + rtol * |expected| (rtol 1e-4, atol 1e-5).
- arm-cpu int8 .tflite: every element within `INT8_STEPS` output quantization steps of the Q/DQ
  simulation of the bundle's reference.onnx in ONNX Runtime (tests/tflite_harness.py) or of the
  exact expected output (a float island that reads the float input is closer to the truth than
  the simulation), where every int8 grid and the output step are derived from the bundle's
  calibration.json (TFLite's asymmetric grid of the calibrated range, and TFLite's fixed-output
  kernel rules), never read from the .tflite.
- jetson Q/DQ ONNX: within `INT8_STEPS` steps (symmetric amax/127 of the output's calibrated
  range) of the expected outputs, plus the error the int8 *input* grid alone causes (the case's
  op evaluated in ONNX Runtime on inputs rounded to their calibration grid), because a Div or Pow
  amplifies input rounding by itself.
- jetson reference.onnx (the folded fp32 model): within rtol 1e-5 / atol 1e-6 in ONNX Runtime.

Where ONNX Runtime on the shipped model disagrees with a case's expected outputs beyond that
reference tolerance (an ONNX Runtime bug, or expected values the test stores rounded), both
targets are judged against ONNX Runtime's answer instead and the verdict says so.

A build that exits 2 must do so in one `error:` line with nothing written to `--out`, and is
counted as *refused*; an unsupported-op refusal must name one of the case's op types and come
before any data is read (rerun with a calibration file that does not exist: same line).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgepipe import quantmath

FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5
REFERENCE_RTOL, REFERENCE_ATOL = 1e-5, 1e-6
INT8_STEPS = 3.0
UNSUPPORTED_MARK = "is not supported by target"


@dataclass
class NodeCase:
    """One backend test: a model and its first data set (inputs and expected outputs by name)."""

    name: str
    source: str  # "node" or a data folder name
    model: onnx.ModelProto
    inputs: dict
    outputs: dict
    model_file: Path | None = None  # the shipped model.onnx, when the case comes from a folder

    @property
    def op_types(self) -> set[tuple[str, str]]:
        return {(n.domain, n.op_type) for n in _all_nodes(self.model.graph)}


def _all_nodes(graph_proto):
    for node in graph_proto.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _data_root() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def _read_tensor(path: Path, names: list[str], index: int):
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return tensor.name or names[index], numpy_helper.to_array(tensor)


def _folder_case(folder: Path, source: str) -> NodeCase | None:
    model_file = folder / "model.onnx"
    data_sets = sorted(folder.glob("test_data_set_*"))
    if not model_file.exists() or not data_sets:
        return None
    model = onnx.load(model_file)
    initializers = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    output_names = [o.name for o in model.graph.output]
    try:
        inputs = dict(_read_tensor(p, input_names, i) for i, p in enumerate(sorted(data_sets[0].glob("input_*.pb"))))
        outputs = dict(_read_tensor(p, output_names, i) for i, p in enumerate(sorted(data_sets[0].glob("output_*.pb"))))
    except Exception:  # sequence / optional protos: not tensors, never a claimed case
        return None
    return NodeCase(folder.name, source, model, inputs, outputs, model_file)


def collect_cases() -> list[NodeCase]:
    """Every node test of the installed onnx package plus the shipped model folders."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        testcases = collect_testcases()
    for test in testcases:
        if not test.data_sets:
            continue
        raw_inputs, raw_outputs = test.data_sets[0]
        if any(not isinstance(v, np.ndarray) for v in list(raw_inputs) + list(raw_outputs)):
            continue  # sequences, optionals: not tensors
        initializers = {t.name for t in test.model.graph.initializer}
        input_names = [i.name for i in test.model.graph.input if i.name not in initializers]
        output_names = [o.name for o in test.model.graph.output]
        cases.append(NodeCase(test.name, "node", test.model, dict(zip(input_names, raw_inputs)),
                              dict(zip(output_names, raw_outputs))))
    for source in FOLDERS:
        for folder in sorted((_data_root() / source).iterdir()):
            case = _folder_case(folder, source)
            if case is not None:
                cases.append(case)
    return cases


def claimed(case: NodeCase, target_name: str) -> bool:
    """Every node of the case (subgraph nodes included) is an operator the target's op table
    covers at the model's opset: what `edgepipe inspect` and the build's support check claim,
    before any attribute- or shape-specific check of a lowering."""
    from edgepipe.targets import load_target

    target = load_target(target_name)
    if not hasattr(target, "operators"):  # before op tables: arm-cpu claims its registry's op types
        return _claimed_by_op_type(case, target_name)
    from edgepipe.backends import support

    table = target.operators()
    versions = support.opsets(case.model)
    for _, node, _ in support.walk_nodes(case.model):
        if node.op_type == "Constant" and support.canonical_domain(node.domain) == support.ONNX_DOMAIN:
            continue
        if support.operator_problem(node, versions, table, target_name) is not None:
            return False
    return True


def _claimed_by_op_type(case: NodeCase, target_name: str) -> bool:
    if target_name != "arm-cpu":
        return all(domain in ("", "ai.onnx") for domain, _ in case.op_types)
    from edgepipe.backends.tflite.ops import registry

    return all(domain in ("", "ai.onnx") and (op in registry() or op == "Constant") for domain, op in case.op_types)


def write_inputs(case: NodeCase, directory: Path) -> tuple[Path, Path]:
    """The case's model file (as shipped, or the test's own ModelProto serialized unchanged) and
    its inputs as an .npz of one sample each."""
    directory.mkdir(parents=True, exist_ok=True)
    model_file = case.model_file
    if model_file is None:
        model_file = directory / "model.onnx"
        model_file.write_bytes(case.model.SerializeToString())
    data_file = directory / "data.npz"
    np.savez(data_file, **{name: sample_form(value) for name, value in case.inputs.items()})
    return model_file, data_file


def sample_form(value: np.ndarray) -> np.ndarray:
    """One sample as the .npz holds it: `[1, *shape]`, except that an input whose leading dim is
    already 1 is stored as itself (`[N, *shape[1:]]` with N = 1); the tool accepts both forms."""
    return value if value.ndim and value.shape[0] == 1 else value[None]


@dataclass
class BuildOutcome:
    exit_code: int
    output: str
    bundle: Path
    exception: BaseException | None = None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


def build(case: NodeCase, target: str, work: Path, calib_override: Path | None = None) -> BuildOutcome:
    """`edgepipe build` in-process through the CLI entry point (`edgepipe.cli.main`)."""
    import contextlib
    import io

    from edgepipe.cli.main import main

    model_file, data_file = write_inputs(case, work / "case")
    out = work / "bundle"
    args = ["build", "--model", str(model_file), "--target", target, "--calib", str(calib_override or data_file),
            "--eval", str(data_file), "--out", str(out), "--calib-method", "minmax", "--no-host-report"]
    cwd, captured, exit_code, exception = os.getcwd(), io.StringIO(), 0, None
    os.chdir(work)  # the stage cache goes to ./build/.cache of this case only
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            main(args)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a traceback the user would see: a crash
        exit_code, exception = 1, exc
    finally:
        os.chdir(cwd)
    return BuildOutcome(exit_code, captured.getvalue(), out, exception)


@dataclass
class Verdict:
    """What one case measured on one target (errors are in the units of each check)."""

    status: str  # "matched" | "refused" | "mismatch" | "crashed"
    detail: str = ""
    errors: dict = field(default_factory=dict)


def _calibration(bundle: Path):
    from edgepipe.calibrate.result import CalibrationResult

    return CalibrationResult.load(bundle / "calibration.json")


def _relative_excess(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> float:
    """max over elements of |got - expected| / (atol + rtol |expected|): <= 1 means within tolerance."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != expected {expected.shape}")
    if not np.array_equal(np.isnan(got), np.isnan(expected)):
        return float("inf")
    both = ~np.isnan(expected)
    difference = np.where(got == expected, 0.0, np.abs(got - expected))  # equal infinities (a causal mask) agree
    return float(np.max(difference[both] / (atol + rtol * np.abs(expected[both])), initial=0.0))


def input_rounding_error(case: NodeCase, params: dict[str, tuple[float, int]]) -> tuple[dict, dict]:
    """|op(q(x)) - op(x)| per output in ONNX Runtime (what the int8 input grid alone costs), and
    op(q(x)) itself."""
    from edgepipe import graph

    session = graph.make_session(case.model)
    rounded = {}
    for name, value in case.inputs.items():
        if name in params and np.issubdtype(value.dtype, np.floating):
            scale, zero_point = params[name]
            value = quantmath.dequantize(quantmath.quantize(value, scale, zero_point), scale, zero_point)
            value = np.asarray(value, case.inputs[name].dtype).reshape(case.inputs[name].shape)  # 0-d stays 0-d
        rounded[name] = value
    names = [o.name for o in session.get_outputs()]
    exact = dict(zip(names, session.run(None, case.inputs)))
    moved = dict(zip(names, session.run(None, rounded)))
    allowance = {name: np.abs(np.asarray(moved[name], np.float64) - np.asarray(exact[name], np.float64))
                 if np.issubdtype(np.asarray(exact[name]).dtype, np.floating) else None for name in names}
    return allowance, moved


def steps_error(got: np.ndarray, expected: np.ndarray, step: float, allowance: np.ndarray,
                closer_to: np.ndarray | None = None) -> float:
    """max |got - expected| in output steps, after the input-rounding allowance; with `closer_to`
    (the exact answer), each element's error is its distance to the nearer of the two."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != expected {expected.shape}")
    excess = np.maximum(np.abs(got - expected) - allowance, 0.0)
    if closer_to is not None:
        excess = np.minimum(excess, np.abs(got - closer_to))
    return float(np.max(excess, initial=0.0)) / step


def tensorrt_params(calibration) -> dict[str, tuple[float, int]]:
    """TensorRT symmetric int8 (amax / 127, 0) of every calibrated tensor."""
    return {name: (calibration.symmetric_scale(name), 0) for name in calibration.tensors}


def judge_int8(case: NodeCase, got: dict, params: dict[str, tuple[float, int]],
               unbounded: set[str] = frozenset()) -> dict[str, float]:
    """jetson: error per output in output steps (the step from `params`, i.e. the calibration); integer
    outputs (ArgMax...) count elements equal to neither the exact nor the input-rounded answer; an
    output the calibration left unbounded (it carries a mask's infinities: no Q/DQ, float) is held
    to the float tolerance."""
    allowance, rounded = input_rounding_error(case, params)
    errors = {}
    for name, expected in case.outputs.items():
        value = np.asarray(got[name])
        if not np.issubdtype(expected.dtype, np.floating):
            errors[f"{name}:elements differing"] = float(np.sum((value != expected) & (value != rounded[name])))
        elif name in unbounded:  # the mask's infinities exactly where expected, the rest in steps of its range
            infinite = np.isinf(expected)
            finite = ~infinite
            if not np.array_equal(value[infinite], expected[infinite]):
                errors[name] = float("inf")
                continue
            step = max(float(np.max(np.abs(expected[finite]), initial=0.0)) / 127, 1e-12)
            errors[name] = steps_error(np.where(finite, value, 0.0), np.where(finite, expected, 0.0), step,
                                       np.where(finite, allowance[name], 0.0))
        elif name not in params:
            errors[name] = float("inf")  # a float output the calibration never saw
        else:
            errors[name] = steps_error(value, expected, params[name][0], allowance[name])
    return errors


def judge_arm_cpu(case: NodeCase, bundle: Path) -> Verdict:
    """fp32 .tflite against the case's expected outputs; int8 .tflite against the Q/DQ simulation
    of reference.onnx in ONNX Runtime whose every int8 grid comes from calibration.json."""
    from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite
    from tests import tflite_harness

    io = json.loads((bundle / "manifest.json").read_text())["io"]
    fp32_io = {key: [dict(s, dtype=s["dtype"] if s["dtype"] in ("int32", "int64", "bool") else "float32",
                          quantization=None) for s in specs] for key, specs in io.items()}
    # arm-cpu bundles take float32: a float16 case's inputs are upcast (exactly), a float64 case's
    # rounded, as run.py casts them (the oracle is still the case's own float64 answer)
    inputs = {k: np.asarray(v, np.float32) if np.asarray(v).dtype in (np.float16, np.float64) else v
              for k, v in case.inputs.items()}
    feed = {spec["name"]: inputs[spec.get("onnx_name", spec["name"])] for spec in io["inputs"]}
    rename = {spec["name"]: spec.get("onnx_name", spec["name"]) for spec in io["outputs"]}
    errors = {}
    oracle, note = _oracle(case)
    for name, value in run_tflite(bundle / "model.fp32.tflite", fp32_io, feed).items():
        errors[f"fp32:{rename[name]}"] = _relative_excess(value, oracle[rename[name]], FP32_RTOL, FP32_ATOL)
    got = {rename[k]: v for k, v in run_tflite(bundle / "model.tflite", io, feed).items()}
    reference = onnx.load(bundle / "reference.onnx")
    params = tflite_harness.expected_int8_params(reference, _calibration(bundle))
    held = tflite_harness.int8_tensor_names(make_interpreter(bundle / "model.tflite", "reference"))
    simulated = tflite_harness.qdq_reference(reference, {n: p for n, p in params.items() if n in held})
    renamed = {i.name for i in simulated.graph.input}
    expected = tflite_harness.run_onnx(simulated, {f"{k}__float" if f"{k}__float" in renamed else k: v
                                                   for k, v in inputs.items()})
    for name, want in oracle.items():
        value, simulation = np.asarray(got[name]), np.asarray(expected[name])
        if not np.issubdtype(want.dtype, np.floating):
            errors[f"int8:{name}:elements differing"] = float(np.sum((value != simulation) & (value != want)))
        else:  # an element is right when the int8 grids explain it, or when it is simply exact
            errors[f"int8:{name}"] = steps_error(value, simulation, params[name][0], 0.0,
                                                 closer_to=np.asarray(want, np.float64))
    verdict = _verdict(errors)
    verdict.detail = "; ".join(filter(None, [verdict.detail, note]))
    return verdict


def _oracle(case: NodeCase) -> tuple[dict, str]:
    """(expected outputs, note): the case's own, or ONNX Runtime's on the shipped model where the
    two disagree (an ONNX Runtime bug, or expected values the test rounded: the AveragePool
    ceil-mode case stores 0.1511 for 0.151056), and the note says so."""
    from edgepipe import graph

    shipped = graph.make_session(case.model)
    ort_outputs = dict(zip([o.name for o in shipped.get_outputs()], shipped.run(None, case.inputs)))
    if any(_relative_excess(ort_outputs[k], v, REFERENCE_RTOL, REFERENCE_ATOL) > 1 for k, v in case.outputs.items()):
        return ort_outputs, "onnxruntime differs from the onnx reference on the shipped model"
    return case.outputs, ""


def judge_jetson(case: NodeCase, bundle: Path) -> Verdict:
    """reference.onnx must reproduce the expected outputs in ONNX Runtime; where ONNX Runtime
    itself disagrees with the onnx reference on the shipped model (a runtime bug, not ours), it
    must reproduce ONNX Runtime's answer on the shipped model instead, and the verdict says so."""
    from edgepipe import graph

    oracle, note = _oracle(case)
    judged = NodeCase(case.name, case.source, case.model, case.inputs, oracle, case.model_file)
    errors = {}
    reference = graph.make_session(onnx.load(bundle / "reference.onnx"))
    for spec, value in zip(reference.get_outputs(), reference.run(None, case.inputs)):
        errors[f"fp32:{spec.name}"] = _relative_excess(value, oracle[spec.name], REFERENCE_RTOL, REFERENCE_ATOL)
    qdq_model = onnx.load(bundle / "model.qdq.onnx")
    qdq = graph.make_session(qdq_model)
    got = dict(zip([o.name for o in qdq.get_outputs()], qdq.run(None, case.inputs)))
    # only inputs the Q/DQ model quantizes move to a grid (a Resize `scales` input stays float)
    quantized = {n.input[0] for n in qdq_model.graph.node if n.op_type == "QuantizeLinear"}
    calibration = _calibration(bundle)
    params = {k: v for k, v in tensorrt_params(calibration).items() if k in quantized or k in case.outputs}
    errors.update({f"int8:{k}": v for k, v in judge_int8(judged, got, params, set(calibration.unbounded)).items()})
    verdict = _verdict(errors)
    verdict.detail = "; ".join(filter(None, [verdict.detail, note]))
    return verdict


def _limit(key: str) -> float:
    if key.endswith(":elements differing"):
        return 0.0
    return 1.0 if key.startswith("fp32") else INT8_STEPS


def _verdict(errors: dict[str, float]) -> Verdict:
    bad = {k: v for k, v in errors.items() if not (v <= _limit(k))}
    if bad:
        return Verdict("mismatch", "; ".join(f"{k} {v:.3g}" for k, v in sorted(bad.items())), errors)
    return Verdict("matched", "", errors)


JUDGES = {"arm-cpu": judge_arm_cpu, "jetson": judge_jetson}


def run_case(case: NodeCase, target: str, work: Path) -> Verdict:
    """Build through the CLI and judge; never raises for a tool failure (it becomes the verdict)."""
    outcome = build(case, target, work)
    if outcome.exit_code == 2:
        return _judge_refusal(case, target, work, outcome)
    if outcome.exit_code != 0:
        exc = outcome.exception
        return Verdict("crashed", f"exit {outcome.exit_code}: {type(exc).__name__}: {str(exc)[:300]}"
                       if exc else f"exit {outcome.exit_code}: {outcome.output.strip()[:300]}")
    try:
        return JUDGES[target](case, outcome.bundle)
    except Exception as exc:  # the built file could not even be run: that is the tool's failure
        return Verdict("crashed", f"running the built bundle: {type(exc).__name__}: {str(exc)[:300]}")


def _judge_refusal(case: NodeCase, target: str, work: Path, outcome: BuildOutcome) -> Verdict:
    """A refusal is one `error:` line, no traceback, nothing at --out. An unsupported-op refusal
    must name one of the case's op types and come before any data is read: the same build with a
    calibration file that does not exist gives the same line."""
    lines = outcome.error_lines
    if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in outcome.output:
        return Verdict("crashed", f"exit 2 without a one-line error: {outcome.output.strip()[:300]}")
    if outcome.bundle.exists():
        return Verdict("crashed", f"refused but wrote {outcome.bundle}: {lines[0]}")
    if UNSUPPORTED_MARK in lines[0]:
        if not any(f"({op_type})" in lines[0] or f"::{op_type})" in lines[0] for _, op_type in case.op_types):
            return Verdict("crashed", f"unsupported-op refusal names no op of the case: {lines[0]}")
        again = build(case, target, work / "no-data", calib_override=work / "missing.npz")
        if again.error_lines != lines:
            return Verdict("crashed", f"op refusal came after reading the data: {again.output.strip()[:300]}")
    return Verdict("refused", lines[0])
