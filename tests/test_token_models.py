"""Token-ID text classifiers through `edgepipe build` on both targets: int64 input_ids and
attention_mask, an additive -inf attention mask, masked mean pooling (tests/fixture_models.py
TokenClassifier), exported by torch's legacy exporter (opset 17, here) and by its default dynamo
exporter (the committed tests/dynamo_exported/token_classifier.onnx). ONNX Runtime FP32 on the
exported file is the reference, on padded samples.

Thresholds: benchmarks/token_models.py measured logits SQNR 32.9 dB (arm-cpu) and 38.7 dB (jetson)
with argmax agreement 0.97-1.0 on 200 samples (untrained weights: near-tied logits); the
asserts leave about 6 dB and a few flips of margin for other calibration draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe import graph
from tests import fixture_models
from tests.helpers import deployed_outputs, run_cli, sqnr_db

DYNAMO_FILE = Path(__file__).parent / "dynamo_exported" / "token_classifier.onnx"
MIN_SQNR_DB = {"arm-cpu": 27.0, "jetson": 32.0}
MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("legacy") / "token_classifier.onnx"
    feed = {k: torch.from_numpy(v) for k, v in fixture_models.token_batch(1, 0).items()}
    torch.onnx.export(fixture_models.build_token_classifier(), (feed["input_ids"], feed["attention_mask"]),
                      str(path), input_names=list(feed), output_names=["logits"], opset_version=17, dynamo=False)
    return path


def _model(exporter: str, legacy_file: Path) -> Path:
    return legacy_file if exporter == "legacy" else DYNAMO_FILE


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_token_classifier_builds_and_matches_fp32(tmp_path, exporter, target, legacy_file):
    model = _model(exporter, legacy_file)
    np.savez(tmp_path / "calib.npz", **fixture_models.token_batch(96, 1))
    result = run_cli("build", "--model", str(model), "--target", target, "--calib", str(tmp_path / "calib.npz"),
                     "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "host report" in result.stdout  # run.py (arm-cpu) / the Q/DQ model (jetson) ran on int64 eval data
    if target == "arm-cpu":  # the int8 encoder is one XNNPACK partition; the mask and lookup ops stay outside
        assert "XNNPACK int8: 1 partition; on builtin kernels: CAST x1, EQUAL x1, GATHER x1" in result.stdout
    feed = fixture_models.token_batch(48, 2)
    session = graph.make_session(graph.load_model(model))
    rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(48)]
    reference = np.concatenate([session.run(None, row)[0] for row in rows])
    got = np.concatenate([deployed_outputs(tmp_path / "bundle", row)[0] for row in rows])
    assert sqnr_db(reference, got) > MIN_SQNR_DB[target]
    assert np.mean(reference.argmax(1) == got.argmax(1)) >= MIN_AGREEMENT


def _export(model, path: Path) -> Path:
    import torch

    feed = {k: torch.from_numpy(v) for k, v in fixture_models.token_batch(1, 0).items()}
    torch.onnx.export(model, (feed["input_ids"], feed["attention_mask"]), str(path), input_names=list(feed),
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def test_legacy_minus_10000_mask_keeps_the_masked_scores_float_on_arm(tmp_path):
    """BERT's older `(1 - mask) * -10000` mask is finite, so it calibrates: one int8 grid over
    [-10000, scores] rounds most real scores to 0. The wide-range rule keeps those Adds float and
    names them; without it (backend.wide_range_float: false) the same file loses several dB."""
    model = _export(fixture_models.build_token_classifier(legacy_mask=True), tmp_path / "legacy_mask.onnx")
    np.savez(tmp_path / "calib.npz", **fixture_models.token_batch(96, 1))
    (tmp_path / "rule_off.yaml").write_text("backend:\n  wide_range_float: false\n")
    feed = fixture_models.token_batch(48, 2)
    rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(48)]
    session = graph.make_session(graph.load_model(model))
    reference = np.concatenate([session.run(None, row)[0] for row in rows])
    sqnr = {}
    for name, extra in (("rule", []), ("no_rule", ["--config", str(tmp_path / "rule_off.yaml")])):
        result = run_cli("build", "--model", str(model), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npz"),
                         "--out", str(tmp_path / name), "--no-host-report", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        named = "kept float: 2 wide-range tensor(s)" in result.stdout
        assert named == (name == "rule"), result.stdout
        got = np.concatenate([deployed_outputs(tmp_path / name, row)[0] for row in rows])
        sqnr[name] = sqnr_db(reference, got)
    assert sqnr["rule"] > MIN_SQNR_DB["arm-cpu"]
    assert sqnr["rule"] > sqnr["no_rule"] + 3.0, sqnr


@pytest.mark.parametrize("bad_id", [1000, -1])
def test_token_id_outside_the_embedding_is_one_line(tmp_path, bad_id, legacy_file):
    data = fixture_models.token_batch(16, 1)
    data["input_ids"][5, 3] = bad_id
    np.savez(tmp_path / "calib.npz", **data)
    result = run_cli("build", "--model", str(legacy_file), "--target", "arm-cpu", "--calib",
                     str(tmp_path / "calib.npz"), "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: calibration sample 5: input 'input_ids' holds token id "
                                                   f"{bad_id}, outside the embedding table of '/emb/Gather' (ids 0..999)")
    assert not (tmp_path / "bundle").exists()


def test_mask_infinity_is_unbounded_but_nan_and_overflow_stay_errors(legacy_file):
    from edgepipe.calibrate import calibrate
    from edgepipe.errors import UserError

    model = graph.load_model(legacy_file)

    class Tokens:
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data["input_ids"])

        def sample(self, i):
            return {k: v[i:i + 1] for k, v in self.data.items()}

    result = calibrate(model, Tokens(fixture_models.token_batch(12, 1)), {"rounds": 1, "method": "minmax"})
    assert "/enc/Where_output_0" in result.unbounded  # masked_fill(-inf): no range, float on every target
    assert not set(result.unbounded) & set(result.tensors)
    assert all(np.isfinite([t.lo, t.hi]).all() for t in result.tensors.values())
    # an infinity no constant of the graph explains (embedding weights overflowing) is still an error
    table = next(t for t in model.graph.initializer if t.name == "emb.weight")
    from onnx import numpy_helper

    huge = numpy_helper.to_array(table).copy()
    huge[:] = 3e38
    table.CopyFrom(numpy_helper.from_array(huge, "emb.weight"))
    with pytest.raises(UserError, match=r"calibration sample 0: tensor '.*' contains NaN or Inf"):
        calibrate(model, Tokens(fixture_models.token_batch(4, 1)), {"rounds": 1, "method": "minmax"})


@pytest.mark.parametrize("lowest", [np.finfo(np.float32).min, -1e9])
def test_finfo_min_mask_is_unbounded_and_stays_float_on_jetson(tmp_path, lowest):
    """Hugging Face's extended mask, (1 - mask) * finfo(float32).min added to the scores: finite,
    but no int8 grid can hold it next to the scores. It and the masked scores get no range; the
    Softmax after them does, and the Q/DQ model puts no pair on them."""
    from onnx import TensorProto, helper, numpy_helper

    from edgepipe.backends.qdq import write_qdq_model
    from edgepipe.calibrate import calibrate

    node = helper.make_node
    graph_proto = helper.make_graph(
        [node("Cast", ["mask"], ["mask_float"], name="cast", to=TensorProto.FLOAT),
         node("Sub", ["one", "mask_float"], ["inverted"], name="invert"),
         node("Mul", ["inverted", "lowest"], ["additive"], name="extend"),
         node("Add", ["scores", "additive"], ["masked"], name="add_mask"),
         node("Softmax", ["masked"], ["weights"], name="softmax", axis=-1),
         node("MatMul", ["weights", "values"], ["y"], name="mix")],
        "hf_mask",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 6]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(lowest, np.float32), "lowest"),
         numpy_helper.from_array(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32), "values")])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(1)
    masks = np.ones((8, 1, 1, 6), np.int64)
    masks[::2, ..., 4:] = 0

    class Samples:
        def __len__(self):
            return 8

        def sample(self, i):
            return {"scores": rng.normal(size=(1, 4, 6)).astype(np.float32), "mask": masks[i]}

    result = calibrate(model, Samples(), {"rounds": 1, "method": "minmax"})
    assert {"additive", "masked"} <= set(result.unbounded)
    assert "weights" in result.tensors and "inverted" in result.tensors  # 0/1 values: a normal range
    qdq, _ = write_qdq_model(model, result)
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert "weights" in quantized and not {"additive", "masked"} & quantized


def test_int64_feeds_become_int32_only_where_they_fit():
    from edgepipe.backends.tflite.runtime import integer_input
    from edgepipe.errors import UserError

    ids = np.array([[101, 2054, 102, 0]], np.int64)
    got = integer_input(ids, "input_ids", np.dtype(np.int32))
    assert got.dtype == np.int32 and np.array_equal(got, ids)
    with pytest.raises(UserError, match=r"input 'input_ids' holds values outside int32 \(0\.\.4294967296\)"):
        integer_input(np.array([[0, 2**32]], np.int64), "input_ids", np.dtype(np.int32))  # would wrap to 0
    assert integer_input(np.array([[1, 0]]), "mask", np.dtype(np.bool_)).tolist() == [[True, False]]


@pytest.mark.parametrize("attribute", ["value_float", "value_floats", "value"])
def test_mask_sentinel_from_a_constant_node_attribute_is_unbounded(attribute):
    """The sentinel may come from a Constant node in any of its float forms (tf2onnx and hand-made
    graphs write `value_float`), not only from an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    from edgepipe.calibrate import calibrate

    lowest = float(np.finfo(np.float32).min)
    value = {"value_float": lowest, "value_floats": [lowest],
             "value": numpy_helper.from_array(np.array(lowest, np.float32))}[attribute]
    node = helper.make_node
    graph_proto = helper.make_graph(
        [node("Constant", [], ["lowest"], name="sentinel", **{attribute: value}),
         node("Cast", ["mask"], ["keep"], name="cast", to=TensorProto.BOOL),
         node("Where", ["keep", "scores", "lowest"], ["masked"], name="fill"),
         node("Softmax", ["masked"], ["y"], name="softmax", axis=-1)],
        "fill_mask",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(2)

    class Samples:
        def __len__(self):
            return 4

        def sample(self, i):
            mask = np.ones((1, 6), np.int64)
            mask[:, 4:] = 0
            return {"scores": rng.normal(size=(1, 6)).astype(np.float32), "mask": mask}

    result = calibrate(model, Samples(), {"rounds": 1, "method": "minmax"})
    assert "masked" in result.unbounded and "y" in result.tensors
