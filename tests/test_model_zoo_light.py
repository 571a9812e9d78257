"""The ONNX model zoo's "light" files that the onnx wheel ships (opset 9, IR 3: caffe2 exports of
SqueezeNet with Dropout, ShuffleNet with Sum, GoogLeNet with LRN and Dropout), built by the CLI as
shipped. Their weights are ConstantOfShape fills and every initializer is also listed as a graph
input (IR 3); ONNX's own runner feeds only the one real input (its dummy data, generated here by
its own function) and stores the expected output next to the file. The built models must
reproduce ONNX Runtime on the shipped file and that stored output, and `edgepipe compare` must
find every LRN output of the int8 model close to FP32 (constant weights make the class scores
uniform, so the layers, not the scores, show the int8 error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepipe import graph
from tests.helpers import run_cli

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = [("squeezenet", "arm-cpu"), ("shufflenet", "arm-cpu"), ("inception_v1", "arm-cpu"), ("inception_v1", "jetson")]
MIN_LRN_SQNR_DB = 40.0


def _runner_input(model: onnx.ModelProto) -> dict:
    """What onnx.backend.test.runner feeds a light model: its dummy data for each non-initializer input."""
    from onnx.backend.test.runner import Runner

    (info,) = graph.graph_inputs(model)
    return {info.name: Runner.generate_dummy_data(info, seed=0, random=False)}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), MODELS)
def test_light_model_builds_as_shipped(name, target, tmp_path):
    path = LIGHT / f"light_{name}.onnx"
    model = onnx.load(path)
    assert model.ir_version == 3 and len(model.graph.input) > len(graph.graph_inputs(model))
    feed = _runner_input(model)
    np.savez(tmp_path / "data.npz", **feed)
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", str(path), "--target", target, "--calib", str(tmp_path / "data.npz"),
                     "--eval", str(tmp_path / "data.npz"), "--out", str(out), "--no-host-report")
    assert result.returncode == 0, result.stderr
    shipped = numpy_helper.to_array(onnx.load_tensor(LIGHT / f"light_{name}_output_0.pb"))
    (want,) = graph.make_session(path).run(None, feed)
    np.testing.assert_allclose(want, shipped, rtol=1e-5)
    reference = onnx.load(out / "reference.onnx")
    assert not {"Dropout", "Sum"} & {n.op_type for n in reference.graph.node}
    if target == "arm-cpu":
        from edgepipe.backends.tflite.runtime import run_tflite

        io = json.loads((out / "manifest.json").read_text())["io"]
        fp32_io = {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in io.items()}
        (output,) = [s["name"] for s in io["outputs"]]
        tflite_feed = {s["name"]: feed[s.get("onnx_name", s["name"])] for s in io["inputs"]}
        outputs = [run_tflite(out / "model.fp32.tflite", fp32_io, tflite_feed)[output],
                   run_tflite(out / "model.tflite", io, tflite_feed)[output]]
    else:
        qdq = graph.make_session(onnx.load(out / "model.qdq.onnx"))
        outputs = [graph.make_session(reference).run(None, feed)[0], qdq.run(None, feed)[0]]
    for got in outputs:
        np.testing.assert_allclose(got.reshape(shipped.shape), shipped, rtol=1e-3)
    compared = run_cli("compare", str(out), "--no-alone", "--json")
    assert compared.returncode == 0, compared.stderr
    tensors = json.loads(compared.stdout)["tensors"]
    lrn = [t for t in tensors if t["producer"] == "LRN"]
    assert len(lrn) == (2 if name == "inception_v1" else 0)
    assert all(t["sqnr_db"] > MIN_LRN_SQNR_DB for t in lrn), lrn
