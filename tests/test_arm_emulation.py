"""The int8 .tflite gives the same answers on real ARM instructions (qemu-aarch64) as on x86.

A small demo-like CNN (conv+relu, depthwise, residual add, average pool, fully connected) is
written as an fp32 and a full-integer int8 .tflite with the `tflite` schema builders, calibrated
on the fp32 model's own activations. The same script then runs both models on the same 16 inputs
with x86 LiteRT in-process and with aarch64 LiteRT (and tflite-runtime 2.14) in ONE emulated
Python process (`edgepipe.emulation`). x86 and ARM int8 kernels may round a few values
differently, so int8 outputs are compared as argmax + "within one quantization step"; fp32
outputs within 1e-5 relative. Emulated timings are never measured or reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import flatbuffers
import numpy as np
import pytest
import tflite

from edgepipe import emulation, quantmath


N_INPUTS = 16
INPUT_SHAPE = (1, 16, 16, 3)
ACTIVATIONS = ("x", "c1", "dw", "res", "c2", "pool", "logits")

# The same runner on both architectures: python3 RUNNER JOB.json. Each run writes its outputs
# (stacked over inputs) to an .npz; meta.json records where and how it ran.
RUNNER = textwrap.dedent('''
    import json, platform, sys
    import numpy as np

    job = json.load(open(sys.argv[1]))
    inputs = np.load(job["inputs"])
    meta = {"machine": platform.machine(), "numpy": np.__version__, "runs": {}}
    for run in job["runs"]:
        if run["runtime"] == "ai-edge-litert":
            import ai_edge_litert as pkg
            from ai_edge_litert import interpreter as tfl
        else:
            import tflite_runtime as pkg
            from tflite_runtime import interpreter as tfl
        it = tfl.Interpreter(model_path=run["model"], num_threads=1,
                             experimental_op_resolver_type=tfl.OpResolverType[run["resolver"]])
        it.allocate_tensors()
        ops = [op["op_name"] for op in it._get_ops_details()]
        inp, outs = it.get_input_details()[0], it.get_output_details()
        results = [[] for _ in outs]
        for x in inputs:
            it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
            it.invoke()
            for acc, out in zip(results, outs):
                acc.append(it.get_tensor(out["index"])[0].copy())
        np.savez(run["out"], *[np.stack(r) for r in results])
        meta["runs"][run["name"]] = {"runtime": f"{run['runtime']} {pkg.__version__}", "ops": ops}
    json.dump(meta, open(job["meta"], "w"), indent=1)
''')


# --- writing the .tflite files -------------------------------------------------------------

class TFLiteGraph:
    """Minimal single-subgraph .tflite writer (children before parents, buffer 0 = sentinel)."""

    def __init__(self):
        self.tensors, self.buffers, self.ops, self.opcodes = [], [b""], [], []
        self.index = {}

    def tensor(self, name, shape, dtype, data=None, quant=None):
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        self.index[name] = len(self.tensors)
        self.tensors.append((name, list(shape), dtype, buffer, quant))
        return name

    def op(self, opcode, version, inputs, outputs, options=None):
        key = (opcode, version)
        if key not in self.opcodes:
            self.opcodes.append(key)
        self.ops.append((self.opcodes.index(key), inputs, outputs, options))

    def serialize(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)

        def vector(start, values, kind="Int32"):
            start(b, len(values))
            for v in reversed(values):
                getattr(b, f"Prepend{kind}")(v)
            return b.EndVector()

        def tables(start, offsets):
            start(b, len(offsets))
            for o in reversed(offsets):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        buffers = []
        for data in self.buffers:
            vec = b.CreateByteVector(data) if data else None
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
        tensors = []
        for name, shape, dtype, buffer, quant in self.tensors:
            name_off, shape_off = b.CreateString(name), vector(tflite.TensorStartShapeVector, shape)
            q_off = None
            if quant is not None:
                scale, zp, axis = np.atleast_1d(quant[0]), np.atleast_1d(quant[1]), quant[2]
                s = vector(tflite.QuantizationParametersStartScaleVector, [float(v) for v in scale], "Float32")
                z = vector(tflite.QuantizationParametersStartZeroPointVector, [int(v) for v in zp], "Int64")
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, s)
                tflite.QuantizationParametersAddZeroPoint(b, z)
                tflite.QuantizationParametersAddQuantizedDimension(b, axis)
                q_off = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape_off)
            tflite.TensorAddType(b, getattr(tflite.TensorType, dtype.upper()))
            tflite.TensorAddBuffer(b, buffer)
            tflite.TensorAddName(b, name_off)
            if q_off is not None:
                tflite.TensorAddQuantization(b, q_off)
            tensors.append(tflite.TensorEnd(b))
        operators = []
        for opcode_index, ins, outs, options in self.ops:
            in_off = vector(tflite.OperatorStartInputsVector, [self.index[n] for n in ins])
            out_off = vector(tflite.OperatorStartOutputsVector, [self.index[n] for n in outs])
            opt = (options[0], options[1](b)) if options else None
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, opcode_index)
            tflite.OperatorAddInputs(b, in_off)
            tflite.OperatorAddOutputs(b, out_off)
            if opt:
                tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, opt[0]))
                tflite.OperatorAddBuiltinOptions(b, opt[1])
            operators.append(tflite.OperatorEnd(b))
        codes = []
        for opcode, version in self.opcodes:
            code = getattr(tflite.BuiltinOperator, opcode)
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, version)
            codes.append(tflite.OperatorCodeEnd(b))
        t_vec = tables(tflite.SubGraphStartTensorsVector, tensors)
        o_vec = tables(tflite.SubGraphStartOperatorsVector, operators)
        i_vec = vector(tflite.SubGraphStartInputsVector, [self.index[n] for n in inputs])
        out_vec = vector(tflite.SubGraphStartOutputsVector, [self.index[n] for n in outputs])
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, t_vec)
        tflite.SubGraphAddOperators(b, o_vec)
        tflite.SubGraphAddInputs(b, i_vec)
        tflite.SubGraphAddOutputs(b, out_vec)
        subgraph = tflite.SubGraphEnd(b)
        sub_vec = tables(tflite.ModelStartSubgraphsVector, [subgraph])
        code_vec = tables(tflite.ModelStartOperatorCodesVector, codes)
        buf_vec = tables(tflite.ModelStartBuffersVector, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, code_vec)
        tflite.ModelAddSubgraphs(b, sub_vec)
        tflite.ModelAddBuffers(b, buf_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def conv_options(stride, relu, depthwise=False):
    prefix = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"

    def build(b):
        getattr(tflite, f"{prefix}Start")(b)
        getattr(tflite, f"{prefix}AddPadding")(b, tflite.Padding.SAME)
        getattr(tflite, f"{prefix}AddStrideH")(b, stride)
        getattr(tflite, f"{prefix}AddStrideW")(b, stride)
        getattr(tflite, f"{prefix}AddDilationHFactor")(b, 1)
        getattr(tflite, f"{prefix}AddDilationWFactor")(b, 1)
        if depthwise:
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
        getattr(tflite, f"{prefix}AddFusedActivationFunction")(
            b, tflite.ActivationFunctionType.RELU if relu else tflite.ActivationFunctionType.NONE)
        return getattr(tflite, f"{prefix}End")(b)
    return prefix, build


def simple_options(prefix, **fields):
    def build(b):
        if prefix == "ReshapeOptions":
            tflite.ReshapeOptionsStartNewShapeVector(b, len(fields["NewShape"]))
            for v in reversed(fields["NewShape"]):
                b.PrependInt32(v)
            shape = b.EndVector()
        getattr(tflite, f"{prefix}Start")(b)
        for key, value in fields.items():
            getattr(tflite, f"{prefix}Add{key}")(b, shape if key == "NewShape" else value)
        return getattr(tflite, f"{prefix}End")(b)
    return prefix, build


def demo_weights(seed=0) -> dict[str, np.ndarray]:
    """TFLite layouts: conv [O,H,W,I], depthwise [1,H,W,C], fully connected [O,I]."""
    rng = np.random.default_rng(seed)
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return {"c1.w": he((8, 3, 3, 3), 27), "c1.b": (rng.standard_normal(8) * 0.1).astype(np.float32),
            "dw.w": he((1, 3, 3, 8), 9), "dw.b": (rng.standard_normal(8) * 0.1).astype(np.float32),
            "c2.w": he((16, 1, 1, 8), 8), "c2.b": (rng.standard_normal(16) * 0.1).astype(np.float32),
            "fc.w": he((10, 16), 16), "fc.b": (rng.standard_normal(10) * 0.1).astype(np.float32)}


def demo_tflite(weights, act_quant=None) -> bytes:
    """x -> conv3x3/2+relu (c1) -> dw3x3+relu (dw) -> c1+dw (res) -> conv1x1+relu (c2 = output
    `features`) -> avgpool 8x8 (pool) -> reshape -> fc (output `logits`).

    fp32 when `act_quant` is None; else full-integer int8 with `act_quant[name] = (scale, zp)`,
    per-channel int8 weights and int32 biases, QUANTIZE in and DEQUANTIZE out (float interface).
    """
    g, q = TFLiteGraph(), act_quant
    dt = "float32" if q is None else "int8"
    aq = (lambda name: None) if q is None else (lambda name: (*q[name], 0))

    def act(name, shape, quant_as=None):
        return g.tensor(name, shape, dt, quant=aq(quant_as or name))

    def layer(name, src, w_axis):
        w, bias = weights[f"{name}.w"], weights[f"{name}.b"]
        if q is None:
            return (g.tensor(f"{name}.w", w.shape, "float32", w),
                    g.tensor(f"{name}.b", bias.shape, "float32", bias))
        wq, ws = quantmath.per_channel_symmetric(w, axis=w_axis)
        bq, bs = quantmath.quantize_bias(bias, q[src][0], ws)
        return (g.tensor(f"{name}.w", w.shape, "int8", wq, (ws, np.zeros(len(ws), np.int64), w_axis)),
                g.tensor(f"{name}.b", bias.shape, "int32", bq, (bs, np.zeros(len(bs), np.int64), 0)))

    g.tensor("input", INPUT_SHAPE, "float32")
    if q is None:
        x = "input"
    else:
        x = act("x", INPUT_SHAPE)
        g.op("QUANTIZE", 1, ["input"], [x])
    g.op("CONV_2D", 3, [x, *layer("c1", "x", 0)], [act("c1", (1, 8, 8, 8))], conv_options(2, True))
    g.op("DEPTHWISE_CONV_2D", 3, ["c1", *layer("dw", "c1", 3)], [act("dw", (1, 8, 8, 8))],
         conv_options(1, True, depthwise=True))
    g.op("ADD", 2, ["c1", "dw"], [act("res", (1, 8, 8, 8))], simple_options("AddOptions"))
    g.op("CONV_2D", 3, ["res", *layer("c2", "res", 0)], [act("c2", (1, 8, 8, 16))], conv_options(1, True))
    g.op("AVERAGE_POOL_2D", 2, ["c2"], [act("pool", (1, 1, 1, 16), quant_as="c2")],
         simple_options("Pool2DOptions", Padding=tflite.Padding.VALID, StrideH=1, StrideW=1,
                        FilterHeight=8, FilterWidth=8))
    g.op("RESHAPE", 1, ["pool"], [act("flat", (1, 16), quant_as="c2")],
         simple_options("ReshapeOptions", NewShape=[1, 16]))
    g.op("FULLY_CONNECTED", 4, ["flat", *layer("fc", "c2", 0)], [act("logits", (1, 10))],
         simple_options("FullyConnectedOptions"))
    if q is None:
        return g.serialize(["input"], ["c2", "logits"])
    g.tensor("features", (1, 8, 8, 16), "float32")
    g.tensor("logits_f", (1, 10), "float32")
    g.op("DEQUANTIZE", 2, ["c2"], ["features"])
    g.op("DEQUANTIZE", 2, ["logits"], ["logits_f"])
    return g.serialize(["input"], ["features", "logits_f"])


def calibrate_on_fp32(fp32_path, samples) -> dict[str, tuple[float, int]]:
    """Per-activation (scale, zero point) from min/max of the fp32 model's own activations."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(fp32_path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    by_name = {t["name"]: t["index"] for t in it.get_tensor_details()}
    lo, hi = {n: 0.0 for n in ACTIVATIONS}, {n: 0.0 for n in ACTIVATIONS}
    for x in samples:
        it.set_tensor(it.get_input_details()[0]["index"], x[None])
        it.invoke()
        for name in ACTIVATIONS:
            value = it.get_tensor(by_name["input" if name == "x" else name])
            lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
    return {n: quantmath.asymmetric_params(lo[n], hi[n]) for n in ACTIVATIONS}


# --- running on both architectures -----------------------------------------------------------

RUNS = [  # name, model, runtime, resolver
    ("int8-xnnpack", "int8", "ai-edge-litert", "AUTO"),
    ("int8-builtin", "int8", "ai-edge-litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"),
    ("fp32-xnnpack", "fp32", "ai-edge-litert", "AUTO"),
    ("fp32-builtin", "fp32", "ai-edge-litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"),
    ("int8-tflite-runtime", "int8", "tflite-runtime", "AUTO"),  # ARM only (needs numpy<2)
]


def write_job(dirpath, models, inputs_path, runs):
    dirpath.mkdir(exist_ok=True)
    job = {"inputs": str(inputs_path), "meta": str(dirpath / "meta.json"),
           "runs": [{"name": name, "model": str(models[kind]), "runtime": runtime, "resolver": resolver,
                     "out": str(dirpath / f"{name}.npz")} for name, kind, runtime, resolver in runs]}
    (dirpath / "job.json").write_text(json.dumps(job))
    return dirpath / "job.json"


def load_results(dirpath):
    meta = json.loads((dirpath / "meta.json").read_text())
    outputs = {name: [a[f"arr_{i}"] for i in range(len(a.files))]
               for name in meta["runs"] for a in [np.load(dirpath / f"{name}.npz")]}
    return meta, outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    reason = emulation.available()
    if reason is not None:
        pytest.skip(f"arm64 emulation unavailable: {reason}")
    rootfs = emulation.ensure_rootfs(log=print)
    work = tmp_path_factory.mktemp("arm")
    rng = np.random.default_rng(1234)
    inputs = rng.uniform(-1, 1, (N_INPUTS, *INPUT_SHAPE[1:])).astype(np.float32)
    calibration = rng.uniform(-1, 1, (32, *INPUT_SHAPE[1:])).astype(np.float32)
    np.save(work / "inputs.npy", inputs)
    weights = demo_weights()
    models = {"fp32": work / "model.fp32.tflite", "int8": work / "model.tflite"}
    models["fp32"].write_bytes(demo_tflite(weights))
    act_quant = calibrate_on_fp32(models["fp32"], calibration)
    models["int8"].write_bytes(demo_tflite(weights, act_quant))
    (work / "runner.py").write_text(RUNNER)

    host_job = write_job(work / "x86", models, work / "inputs.npy", RUNS[:4])
    subprocess.run([sys.executable, str(work / "runner.py"), str(host_job)], check=True, timeout=300)
    arm_job = write_job(work / "arm", models, work / "inputs.npy", RUNS)
    proc = emulation.run_in_arm64(rootfs, work / "runner.py", [arm_job], cwd=work, timeout=600)
    assert proc.returncode == 0, f"emulated runner failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    steps = {"features": act_quant["c2"][0], "logits": act_quant["logits"][0]}
    return {"x86": load_results(work / "x86"), "arm": load_results(work / "arm"), "steps": steps}


def int8_agreement(ref, test, steps):
    """(argmax same for all inputs, fraction of values within 1 step, max |diff| in steps, bit-equal fraction)."""
    diffs = [np.abs(t.astype(np.float64) - r) / s for r, t, s in zip(ref, test, steps)]
    flat = np.concatenate([d.ravel() for d in diffs])
    argmax_same = bool(np.array_equal(ref[1].argmax(axis=1), test[1].argmax(axis=1)))
    return argmax_same, float(np.mean(flat <= 1.0 + 1e-3)), float(flat.max()), float(np.mean(flat < 1e-3))


@pytest.mark.arm
@pytest.mark.slow
def test_runs_on_emulated_aarch64_with_xnnpack(runs):
    (x86_meta, _), (arm_meta, _) = runs["x86"], runs["arm"]
    assert x86_meta["machine"] == "x86_64"
    assert arm_meta["machine"] == "aarch64"
    assert arm_meta["runs"]["int8-xnnpack"]["runtime"] == "ai-edge-litert 2.3.0"
    # The default path really is XNNPACK on ARM (a rejected node would make this a builtin run).
    assert "DELEGATE" in arm_meta["runs"]["int8-xnnpack"]["ops"]
    assert "DELEGATE" not in arm_meta["runs"]["int8-builtin"]["ops"]
    assert "CONV_2D" in arm_meta["runs"]["int8-builtin"]["ops"]


@pytest.mark.arm
@pytest.mark.slow
def test_int8_model_is_a_meaningful_quantization_of_fp32(runs):
    _, out = runs["x86"]
    fp32, int8 = out["fp32-builtin"], out["int8-builtin"]
    assert np.std(int8[1], axis=0).max() > 5 * runs["steps"]["logits"]  # outputs depend on the input
    for ref, test in zip(fp32, int8):
        assert quantmath.cosine(ref, test) > 0.99
    assert np.mean(fp32[1].argmax(axis=1) == int8[1].argmax(axis=1)) >= 0.8


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.parametrize("run, x86_run", [("int8-xnnpack", "int8-xnnpack"), ("int8-builtin", "int8-builtin"),
                                          ("int8-tflite-runtime", "int8-builtin")])
def test_int8_arm_matches_x86(runs, run, x86_run):
    steps = [runs["steps"]["features"], runs["steps"]["logits"]]
    argmax_same, within_one, max_steps, bit_equal = int8_agreement(runs["x86"][1][x86_run], runs["arm"][1][run], steps)
    print(f"{run} (ARM) vs {x86_run} (x86): argmax same={argmax_same}, within 1 step={within_one:.4%}, "
          f"bit-equal={bit_equal:.4%}, max diff={max_steps:.1f} steps")
    assert argmax_same
    assert within_one >= 0.99


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.parametrize("run", ["fp32-xnnpack", "fp32-builtin"])
def test_fp32_arm_matches_x86(runs, run):
    for ref, test in zip(runs["x86"][1][run], runs["arm"][1][run]):
        print(f"{run}: max |ARM - x86| / max |x86| = {np.abs(test - ref).max() / np.abs(ref).max():.2e}")
        np.testing.assert_allclose(test, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


# --- the rootfs cache itself (no qemu needed) -----------------------------------------------

def test_available_names_the_missing_tool(monkeypatch):
    monkeypatch.setattr(emulation.shutil, "which", lambda tool: None)
    assert "qemu-aarch64-static" in emulation.available()
    monkeypatch.setattr(emulation.shutil, "which", lambda tool: None if tool == "debootstrap" else f"/usr/bin/{tool}")
    monkeypatch.setenv("EDGEPIPE_CACHE", "/nonexistent/edgepipe-cache")
    assert "debootstrap" in emulation.available()


def test_interrupted_build_is_never_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPIPE_CACHE", str(tmp_path))

    def failing_build(root, log):
        (root / "half-written").write_text("x")
        raise RuntimeError("network went away")

    monkeypatch.setattr(emulation, "_build", failing_build)
    with pytest.raises(RuntimeError, match="network went away"):
        emulation.ensure_rootfs(log=lambda msg: None)
    assert emulation.cached_rootfs() is None
    assert list(tmp_path.iterdir()) == []  # the partial directory is gone, nothing at the final path

    built = []
    monkeypatch.setattr(emulation, "_build", lambda root, log: built.append(root))
    rootfs = emulation.ensure_rootfs(log=lambda msg: None)
    assert rootfs == emulation.rootfs_path() and (rootfs / emulation.MARKER).is_file()
    assert built[0] != rootfs  # built elsewhere, then renamed into place
    assert emulation.ensure_rootfs(log=lambda msg: None) == rootfs and len(built) == 1  # reused
