"""calibrate(): streaming over a real ONNX model, memory, stability warnings, errors, settings."""

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.calibrate import calibrate
from edgepipe.errors import UserError
from edgepipe.stages.calibrate import run_calibration, validate_settings
from tests.helpers import ArrayDataset


def tiny_model() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, plus Shape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 8)).astype(np.float32), "wfc"),
        numpy_helper.from_array(np.zeros(5, np.float32), "bfc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["conv2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 5]),
            helper.make_tensor_value_info("x_shape", TensorProto.INT64, [4]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)




def iid(n, seed=0):
    return ArrayDataset(np.random.default_rng(seed).normal(size=(n, 3, 8, 8)))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def result_auto(model):
    return calibrate(model, iid(48))


def test_calibrates_float_activations_only_and_fills_the_contract(result_auto):
    assert set(result_auto.tensors) == {"x", "conv1", "relu1", "conv2", "pool", "flat", "logits", "probs"}
    assert result_auto.num_samples == 48
    for name, t in result_auto.tensors.items():
        assert t.min <= t.max and 0 < t.amax <= max(abs(t.min), abs(t.max)) + 1e-12
        assert t.lo <= 0.0 <= t.hi and t.method in {"entropy", "percentile", "mse", "minmax"}
        assert t.reason, name
        assert t.stability["rounds"] == 4 and len(t.stability["round_amax"]) == 4
        summary = result_auto.histograms[name]
        assert len(summary["counts"]) == 64 and summary["amax"] == t.amax
    assert result_auto.tensors["relu1"].min == 0.0 and result_auto.tensors["relu1"].lo == 0.0


def test_auto_applies_output_and_softmax_rules(result_auto):
    probs, logits = result_auto.tensors["probs"], result_auto.tensors["logits"]
    assert probs.method == "minmax" and probs.amax == max(abs(probs.min), abs(probs.max))
    assert "graph output" in probs.reason
    assert "Softmax" in logits.reason and logits.method in {"mse", "percentile"}
    assert "lowest estimated MSE" in result_auto.tensors["conv2"].reason


def test_result_round_trips_through_json(result_auto):
    from edgepipe.calibrate.result import CalibrationResult

    again = CalibrationResult.from_json(result_auto.to_json())
    assert again.to_json() == result_auto.to_json()
    assert result_auto.symmetric_scale("conv1") == pytest.approx(result_auto.tensors["conv1"].amax / 127)


@pytest.mark.parametrize("method, tensors", [("minmax", None), ("percentile", None), ("mse", None), ("entropy", ["relu1", "conv2"])])
def test_statistics_do_not_depend_on_batch_size(model, method, tensors):
    data = iid(20, seed=3)
    one = calibrate(model, data, {"method": method, "batch_size": 1}, tensors=tensors)
    many = calibrate(model, data, {"method": method, "batch_size": 3}, tensors=tensors)
    for name, t in one.tensors.items():
        assert (t.min, t.max, t.amax, t.lo, t.hi) == pytest.approx(
            (many.tensors[name].min, many.tensors[name].max, many.tensors[name].amax,
             many.tensors[name].lo, many.tensors[name].hi), rel=1e-6)
        assert one.histograms[name]["counts"] == many.histograms[name]["counts"]


def test_minmax_equals_one_shot_numpy(model):
    data = iid(10, seed=5)
    result = calibrate(model, data, {"method": "minmax"}, tensors=["x", "relu1"])
    assert set(result.tensors) == {"x", "relu1"}
    assert result.tensors["x"].min == data.x.min() and result.tensors["x"].max == data.x.max()
    assert result.tensors["x"].amax == np.abs(data.x).max()


def test_peak_memory_does_not_grow_with_samples(model):
    def peak(n):
        data = iid(n, seed=1)
        calibrate(model, data, {"method": "minmax", "rounds": 4})  # warm imports/caches
        tracemalloc.start()
        calibrate(model, data, {"method": "minmax", "rounds": 4})
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(50), peak(400)
    assert large < small * 1.5 + 256 * 1024, (small, large)


def test_stability_warns_on_shifted_set_not_on_iid(model):
    """Unstable thresholds are measured here; the warning needs them to move the int8 output."""
    from edgepipe.calibrate import stability
    from edgepipe.targets import load_target

    def quantize(m, c):
        return load_target("jetson").qdq_model(m, c)[0]

    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 3, 8, 8))
    steady = calibrate(model, ArrayDataset(x), {"method": "mse"})
    assert stability.unstable_tensors(steady) == []
    assert stability.output_effect(model, steady, ArrayDataset(x), quantize) is None
    shifted = x * np.repeat([0.3, 1.0, 1.0, 3.0], 64)[:, None, None, None]
    drifting = calibrate(model, ArrayDataset(shifted), {"method": "mse"})
    assert not any("vary" in w for w in drifting.warnings)  # calibration alone cannot tell whether it matters
    assert "x" in stability.unstable_tensors(drifting)
    assert drifting.tensors["x"].stability["spread"] > 0.5 > steady.tensors["x"].stability["spread"]
    assert drifting.tensors["x"].stability["kl_noise"] > 1.0 > steady.tensors["x"].stability["kl_noise"]
    effect = stability.output_effect(model, drifting, ArrayDataset(shifted), quantize)
    assert effect["warn"] and effect["drop_db"] > stability.OUTPUT_DROP_DB and len(effect["sqnr_rounds_db"]) == 4
    # the drop is measured: round 0's thresholds (0.3x data) clip the rest, so that round is the worst
    assert min(effect["sqnr_rounds_db"]) == effect["sqnr_rounds_db"][0] < effect["sqnr_chosen_db"]
    warning = stability.effect_warning(effect)
    assert "(first: '" in warning and "change the output" in warning


def test_small_set_warning(model):
    result = calibrate(model, iid(12), {"method": "minmax"})
    assert "calibration set has 12 samples; 100-500 representative samples are recommended" in result.warnings


@pytest.mark.parametrize("batch_size", [1, 4])
def test_nan_input_names_the_sample(model, batch_size):
    data = iid(10)
    data.x[6, 1, 2, 3] = np.nan
    with pytest.raises(UserError, match=r"calibration sample 6: input 'x' contains NaN"):
        calibrate(model, data, {"batch_size": batch_size})


def test_inf_activation_names_sample_and_tensor(model):
    data = iid(8)
    data.x[5] = 3e38  # finite input, overflows to inf in conv1
    with pytest.raises(UserError, match=r"calibration sample 5: tensor 'conv1' contains NaN or Inf"):
        calibrate(model, data, {"batch_size": 4})


def test_overrides_by_name_and_op_type(model):
    result = calibrate(model, iid(16), {"method": "mse", "overrides": {"relu1": "minmax", "Conv": "percentile"}})
    assert result.tensors["relu1"].method == "minmax"
    assert result.tensors["conv1"].method == "percentile" and result.tensors["conv2"].method == "percentile"
    assert result.tensors["pool"].method == "mse"


def test_settings_errors_are_one_line_and_name_the_choice(model):
    with pytest.raises(UserError, match="use one of: auto, entropy, percentile, mse, minmax"):
        validate_settings({"method": "kl"})
    with pytest.raises(UserError, match="override for 'conv1'"):
        validate_settings({"overrides": {"conv1": "max"}})
    with pytest.raises(UserError, match="'rounds' must be a positive integer"):
        validate_settings({"rounds": 0})
    with pytest.raises(UserError, match="setting 'bins' is unknown"):
        validate_settings({"bins": 10})
    with pytest.raises(UserError, match="tensor 'nope'"):
        calibrate(model, iid(4), tensors=["nope"])
    with pytest.raises(UserError, match="no input 'x'"):
        calibrate(model, type("D", (), {"__len__": lambda s: 1, "sample": lambda s, i: {"y": 0}})())


def test_stage_runs_and_reports_progress(model):
    calls = []
    result = run_calibration(model, iid(8), {"max_samples": 6, "batch_size": 2}, progress=lambda d, t: calls.append((d, t)))
    assert result.num_samples == 6
    assert calls[-1] == (6, 6) and all(d <= t for d, t in calls)


def test_tensor_chunks_cover_every_tensor_in_order(model):
    from edgepipe.calibrate import collector

    names = list(collector.calibratable_tensors(model))
    chunks = collector.tensor_chunks(model, names, batch_size=1, max_exposed_mb=384 * 4 / 2**20)
    assert len(chunks) > 1 and [n for c in chunks for n in c] == names
    small_budget = calibrate(model, iid(8), {"method": "minmax", "max_exposed_mb": 384 * 4 / 2**20})
    one_pass = calibrate(model, iid(8), {"method": "minmax"})
    assert small_budget.to_json()["tensors"] == one_pass.to_json()["tensors"]


def test_buffered_binning_equals_one_update_per_batch(model, monkeypatch):
    """Small activations are held back and binned per flush (collector._Pending): same counts,
    extremes and thresholds as binning every batch on its own, whatever the flush points."""
    from edgepipe.calibrate import collector

    data = iid(30, seed=7)
    buffered = calibrate(model, data, {"method": "mse"})
    monkeypatch.setattr(collector, "PENDING_BATCHES", 1)  # flush after every batch
    direct = calibrate(model, data, {"method": "mse"})
    monkeypatch.setattr(collector, "PENDING_BATCHES", 7)  # flush points inside rounds
    monkeypatch.setattr(collector, "DIRECT_BYTES", 600)  # mixed: larger tensors skip the buffer
    mixed = calibrate(model, data, {"method": "mse"})
    assert buffered.to_json() == direct.to_json() == mixed.to_json()


def test_round_calibration_changes_only_the_named_tensors_of_a_copy(model):
    """The per-round copy shares everything it does not change, so the chosen calibration must
    come out untouched; the named tensors carry the round's threshold, ranges scaled alike."""
    from edgepipe.calibrate import stability

    chosen = calibrate(model, iid(32, seed=3), {"method": "mse"})
    before = chosen.to_json()
    name = "relu1"
    tensor = chosen.tensors[name]
    round_amax = tensor.stability["round_amax"][1]
    copy = stability.round_calibration(chosen, 1, [name])
    assert chosen.to_json() == before
    moved = copy.tensors[name]
    ratio = round_amax / tensor.amax
    assert (moved.amax, moved.lo, moved.hi) == (round_amax, tensor.lo * ratio, tensor.hi * ratio)
    assert all(copy.tensors[n] == chosen.tensors[n] for n in chosen.tensors if n != name)


def test_sessions_that_do_not_spin_compute_the_same_statistics(model, monkeypatch):
    """graph.make_session's threads sleep between ops instead of spin-waiting (CPU time on busy
    hosts); kernels and thread count are unchanged, so every statistic is the same as with
    ONNX Runtime's spinning default."""
    from edgepipe import graph

    options = graph.make_session(model).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    data = iid(24, seed=5)
    quiet = calibrate(model, data, {"method": "entropy"})
    monkeypatch.setattr(graph, "no_spinning", lambda options: options)
    spinning = calibrate(model, data, {"method": "entropy"})
    assert quiet.to_json() == spinning.to_json()


@pytest.mark.parametrize("method", ["auto", "entropy", "mse"])
def test_threaded_binning_and_range_choice_equal_one_thread(model, monkeypatch, method):
    """Tensors are binned and their ranges chosen on several threads (collector.Workers): every
    count, extreme, threshold and stability figure equals the one-thread result."""
    from edgepipe.calibrate import collector

    data = iid(40, seed=11)
    monkeypatch.setattr(collector, "BINNING_THREADS", 1)
    inline = calibrate(model, data, {"method": method, "batch_size": 3})
    monkeypatch.setattr(collector, "BINNING_THREADS", 4)
    monkeypatch.setattr(collector.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(collector, "DIRECT_BYTES", 600)  # large tensors binned with their batch, on threads
    with collector.Workers() as workers:
        assert workers.pool is not None
    threaded = calibrate(model, data, {"method": method, "batch_size": 3})
    assert threaded.to_json() == inline.to_json()


@pytest.mark.parametrize("target_name", ["jetson", "arm-cpu"])
def test_folded_weight_quantization_gives_the_same_outputs(model, result_auto, target_name):
    """graph.fold_constant_quantize (the output-effect check's Q/DQ models) stores the weights'
    int8 values instead of quantizing them on every run; every output stays the same."""
    from edgepipe import graph
    from edgepipe.targets import load_target

    qdq = load_target(target_name).qdq_model(model, result_auto)[0]
    folded = graph.fold_constant_quantize(qdq)
    constants = {t.name for t in folded.graph.initializer}
    before = sum(n.op_type == "QuantizeLinear" and n.input[0] in {t.name for t in qdq.graph.initializer}
                 for n in qdq.graph.node)
    assert before == 3  # conv1, conv2 and fc weights
    assert not [n for n in folded.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in constants]
    dequantized = [n for n in folded.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert len(dequantized) == 3
    assert all(numpy_helper.to_array(graph.initializers(folded)[n.input[0]]).dtype == np.int8 for n in dequantized)
    cache: dict = {}
    assert graph.fold_constant_quantize(qdq, cache) == folded  # computed, then reused:
    assert graph.fold_constant_quantize(qdq, cache) == folded and len(cache) == 3
    changed = onnx.ModelProto()
    changed.CopyFrom(qdq)
    weight = next(t for t in changed.graph.initializer if t.name == cache_key_weight(qdq))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2, weight.name))
    assert graph.fold_constant_quantize(changed, cache) == graph.fold_constant_quantize(changed)  # not stale
    feeds = iid(4, seed=3)
    a, b = graph.make_session(qdq), graph.make_session(folded)
    for i in range(len(feeds)):
        for x, y in zip(a.run(None, feeds.sample(i)), b.run(None, feeds.sample(i))):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("target_name", ["jetson", "arm-cpu"])
def test_folded_weights_give_the_same_outputs(model, result_auto, target_name):
    """graph.fold_constant_weights (the checks' int8 sessions) also computes each weight's
    DequantizeLinear once (ONNX Runtime's own kernel): no Q or DQ is left on a constant, each
    weight is exactly what its DQ node produced, read through an Identity, and every output of
    the simulated model stays the same on every sample. (Handed to the Gemm as a constant
    initializer, the fc weight is packed ahead of the first run and the outputs differ.)"""
    from edgepipe import graph
    from edgepipe.targets import load_target

    qdq = load_target(target_name).qdq_model(model, result_auto)[0]
    quantized = graph.fold_constant_quantize(qdq)
    folded = graph.fold_constant_weights(qdq)
    constants, readers = graph.initializers(quantized), graph.consumers(quantized)
    weight_dq = {n.output[0]: {r.op_type for r in readers[n.output[0]]} for n in quantized.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    assert sorted(map(sorted, weight_dq.values())) == [["Conv"], ["Conv"], ["Gemm"]]
    folded_constants = graph.initializers(folded)
    assert not [n for n in folded.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and all(not i or i in folded_constants for i in n.input)]
    producers = {n.output[0]: n for n in folded.graph.node}
    dequantize = graph.make_session(graph.expose_tensors(quantized, sorted(weight_dq)))
    feeds = iid(4, seed=3)
    produced = dict(zip([o.name for o in dequantize.get_outputs()], dequantize.run(None, feeds.sample(0))))
    for name in weight_dq:
        reader = producers[name]
        assert reader.op_type == "Identity" and reader.input[0] in folded_constants
        value = numpy_helper.to_array(folded_constants[reader.input[0]])
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, produced[name])
    onnx.checker.check_model(folded)
    cache: dict = {}
    assert graph.fold_constant_weights(qdq, cache) == folded  # computed, then reused
    assert graph.fold_constant_weights(qdq, cache) == folded
    a, b = graph.make_session(qdq), graph.make_session(folded)
    for i in range(len(feeds)):
        for x, y in zip(a.run(None, feeds.sample(i)), b.run(None, feeds.sample(i))):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("count", [0, 1, 2, 7, 50, 403])
@pytest.mark.parametrize("run", [None, 1, 5])
def test_workers_map_keeps_every_result_in_order(count, run):
    """Workers.map runs consecutive items per task: every item once, results in input order."""
    from edgepipe.calibrate.collector import Workers

    seen = []
    with Workers(3) as workers:
        results = workers.map(lambda item: seen.append(item) or item * 2, list(range(count)), run=run)
    assert results == [2 * i for i in range(count)]
    assert sorted(seen) == list(range(count))


def cache_key_weight(qdq) -> str:
    """The float weight that the first QuantizeLinear on a constant reads."""
    constants = {t.name for t in qdq.graph.initializer}
    return next(n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in constants)


def test_fold_constant_quantize_takes_the_output_type_from_output_dtype():
    """Opset 21 QuantizeLinear without a zero point names its type in `output_dtype`: folded to
    int8 (not the uint8 default), same outputs."""
    from edgepipe import graph

    weight = numpy_helper.from_array(np.array([[0.5, -1.0], [0.25, 2.0]], np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    nodes = [helper.make_node("QuantizeLinear", ["w", "s"], ["wq"], output_dtype=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"]),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight, scale]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    folded = graph.fold_constant_quantize(model)
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "MatMul"]
    assert graph.initializers(folded)["wq"].data_type == TensorProto.INT8
    feed = {"x": np.array([[1.0, 2.0]], np.float32)}
    np.testing.assert_array_equal(graph.make_session(model).run(None, feed)[0], graph.make_session(folded).run(None, feed)[0])


def test_output_effect_reuses_calibrations_fp32_outputs_with_the_same_result(model):
    """calibrate() keeps the FP32 outputs of the effect check's samples (stability.ReferenceOutputs)
    from its own runs; the check then gives the same numbers as running the FP32 model again."""
    from edgepipe.calibrate import stability
    from edgepipe.calibrate.bias_correction import split_for_check
    from edgepipe.calibrate.result import CalibrationResult
    from edgepipe.targets import load_target

    float_outputs = onnx.ModelProto()
    float_outputs.CopyFrom(model)
    del float_outputs.graph.output[1]  # x_shape: an int64 output calibration never fetches
    del float_outputs.graph.node[-1]

    def quantize(m, c):
        return load_target("jetson").qdq_model(m, c)[0]

    x = np.random.default_rng(2).normal(size=(256, 3, 8, 8)) * np.repeat([0.3, 1.0, 1.0, 3.0], 64)[:, None, None, None]
    drifting = calibrate(float_outputs, ArrayDataset(x), {"method": "mse"})
    effect_samples = set(np.linspace(0, 255, 16).round().astype(int))
    held_out = set(int(i) for i in split_for_check(256)[1])  # the bias-correction check's samples
    assert set(drifting.reference_outputs) == stability.ReferenceOutputs(256).wanted == effect_samples | held_out
    reloaded = CalibrationResult.from_json(drifting.to_json())  # as from the stage cache: nothing kept
    assert reloaded.reference_outputs == {} and "reference_outputs" not in drifting.to_json()
    reused = stability.output_effect(float_outputs, drifting, ArrayDataset(x), quantize)
    rerun = stability.output_effect(float_outputs, reloaded, ArrayDataset(x), quantize)
    assert reused is not None and reused == rerun
    assert calibrate(model, ArrayDataset(x[:64]), {"method": "mse"}).reference_outputs == {}  # an output not fetched


def test_reference_outputs_keep_whole_groups_within_the_byte_budget(monkeypatch):
    """The kept FP32 outputs stay under REFERENCE_BYTES: the output-effect check's samples first,
    the bias check's held-out samples only when all of them fit too, never a part of a group."""
    from edgepipe.calibrate import stability
    from edgepipe.calibrate.bias_correction import split_for_check

    outputs = [np.zeros(250, np.float32)]  # 1000 bytes per sample
    effect, held = set(np.linspace(0, 63, 16).round().astype(int)), set(int(i) for i in split_for_check(64)[1])
    for budget, expected in [(10**6, effect | held), (len(effect) * 1000, effect), (len(effect) * 1000 - 1, set())]:
        monkeypatch.setattr(stability, "REFERENCE_BYTES", budget)
        reference = stability.ReferenceOutputs(64)
        for index in range(64):
            reference.keep(index, outputs)
        assert set(reference.kept()) == expected and reference.nbytes <= budget
