"""Layer sensitivity: a constructed outlier layer must rank first; report JSON and CLI table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.backends.qdq import asymmetric_activations, write_qdq_model
from edgepipe.calibrate import calibrate
from edgepipe.data import load_dataset
from edgepipe.errors import UserError
from edgepipe.graph import constant_value
from edgepipe.accuracy.sensitivity import analyze_sensitivity
from edgepipe.targets import load_target

GPU = load_target("desktop-gpu")  # symmetric activations (TensorRT)
ARM = load_target("arm-cpu")  # asymmetric activations (TFLite)

WIDTH, CLASSES, FEATURES = 32, 10, 16


def outlier_mlp(outliers: dict[int, float], seed: int = 0) -> onnx.ModelProto:
    """x[1,16] -> fc1 -> relu -> fc2 -> relu -> fc3 -> relu -> fc4 -> logits[1,10].

    `outliers` maps a layer index i (1..3) to a factor f: output channel 0 of fc{i} is multiplied
    by f and the matching input column of fc{i+1} divided by f. The FP32 function is unchanged,
    but the per-tensor INT8 activation feeding fc{i+1} now spans f times the range of its other
    channels - so fc{i+1} is the node that quantization hurts.
    """
    rng = np.random.default_rng(seed)
    dims = [FEATURES, WIDTH, WIDTH, WIDTH, CLASSES]
    weights = [rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32) / np.sqrt(dims[i]) for i in range(4)]
    biases = [rng.standard_normal(dims[i + 1]).astype(np.float32) * 0.1 for i in range(4)]
    for layer, factor in outliers.items():
        weights[layer - 1][0] *= factor
        biases[layer - 1][0] = abs(biases[layer - 1][0]) * factor
        weights[layer][:, 0] /= factor
    inits, nodes, current = [], [], "x"
    for i in range(4):
        inits += [numpy_helper.from_array(weights[i].astype(np.float32), f"w{i + 1}"),
                  numpy_helper.from_array(biases[i].astype(np.float32), f"b{i + 1}")]
        out = "logits" if i == 3 else f"h{i + 1}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i + 1}", f"b{i + 1}"], [out], name=f"fc{i + 1}", transB=1))
        if i < 3:
            nodes.append(helper.make_node("Relu", [out], [f"r{i + 1}"], name=f"relu{i + 1}"))
            current = f"r{i + 1}"
    g = helper.make_graph(nodes, "outlier_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def npz_dataset(tmp_path, name: str, count: int, seed: int, labels=None):
    """Random inputs as an .npz read back through edgepipe.data (the path users take)."""
    x = np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)
    arrays = {"x": x} if labels is None else {"x": x, "labels": labels(x)}
    np.savez(tmp_path / f"{name}.npz", **arrays)
    return load_dataset(tmp_path / f"{name}.npz", {"x": ((1, FEATURES), np.float32)})


def calibrated(model, tmp_path, count: int = 64):
    return calibrate(model, npz_dataset(tmp_path, "calib", count, seed=1), {"method": "minmax", "rounds": 2})


def test_outlier_consumer_ranks_first(tmp_path):
    model = outlier_mlp({2: 300.0})
    report = analyze_sensitivity(model, calibrated(model, tmp_path), npz_dataset(tmp_path, "eval", 48, seed=2),
                                 target=GPU)
    names = [n.group.name for n in report.nodes]
    assert names[0] == "fc3", report.text_table()
    top = report.nodes[0]
    assert top.group.nodes == ("fc3", "relu3")  # grouped with its activation
    assert top.recovery_db > 10.0  # keeping it float recovers a lot ...
    assert top.only.sqnr_db < min(n.only.sqnr_db for n in report.nodes[1:])  # ... and it is the worst alone
    assert top.activation["tensor"] == "r2" and top.activation["max"] > 50.0


def test_report_json_and_table(tmp_path):
    model = outlier_mlp({1: 50.0})
    labels = lambda x: (x[:, 0] > 0).astype(np.int64)  # noqa: E731 - any labels make top1 available
    report = analyze_sensitivity(model, calibrated(model, tmp_path),
                                 npz_dataset(tmp_path, "eval", 32, seed=3, labels=labels), target=GPU,
                                 max_samples=16)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))  # strict JSON: no inf/nan
    assert data["metric"] == "top1" and data["samples"] == 16
    assert {n["name"] for n in data["nodes"]} == {"fc1", "fc2", "fc3", "fc4"}
    for key in ("name", "op_type", "sqnr_only_db", "sqnr_all_but_db", "metric_drop"):
        assert all(key in n for n in data["nodes"])
    assert data["nodes"][0]["name"] == "fc2"
    table = report.text_table(top=2)
    assert "fc2" in table and len(table.splitlines()) == 4  # header, 2 rows, summary


def test_asymmetric_scheme_and_bad_group(tmp_path):
    model = outlier_mlp({})
    calibration = calibrated(model, tmp_path)
    dataset = npz_dataset(tmp_path, "eval", 24, seed=4)
    sym = analyze_sensitivity(model, calibration, dataset, target=GPU, groups=[["fc3"], ["fc4"]])
    asym = analyze_sensitivity(model, calibration, dataset, target=ARM, groups=[["fc3"], ["fc4"]])
    # post-ReLU inputs: the asymmetric grid spends all 256 levels on [0, hi] instead of 128 (weight
    # noise, the same in both, dominates, so only the direction is asserted)
    assert asym.int8.sqnr_db > sym.int8.sqnr_db
    qdq, _ = write_qdq_model(model, calibration)
    rewritten = asymmetric_activations(qdq, calibration)
    quantize = next(n for n in rewritten.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r2")
    scale, zero_point = calibration.asymmetric_params("r2")
    assert float(constant_value(rewritten, quantize.input[1])) == pytest.approx(scale)
    assert int(constant_value(rewritten, quantize.input[2])) == zero_point == -128
    with pytest.raises(UserError, match="'nope' is not in the model"):
        analyze_sensitivity(model, calibration, dataset, target=GPU, groups=[["nope"]])


def test_cli_sensitivity_json_and_plan(tmp_path):
    from click.testing import CliRunner

    from edgepipe.cli.main import cli

    model = outlier_mlp({2: 300.0})
    onnx.save(model, tmp_path / "mlp.onnx")
    npz_dataset(tmp_path, "calib", 32, seed=1)
    npz_dataset(tmp_path, "eval", 32, seed=2)
    result = CliRunner().invoke(cli, ["sensitivity", str(tmp_path / "mlp.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                      "--eval", str(tmp_path / "eval.npz"), "--budget", "0.05", "--json",
                                      "--out", str(tmp_path / "sensitivity.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert data["nodes"][0]["name"] == "fc3" and data["scheme"] == "symmetric"
    assert data["plan"]["met"] and "fc3" in data["plan"]["float_nodes"]
