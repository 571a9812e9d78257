"""Range searches run once per distinct histogram inside `methods.memoized()` (calibrate() uses it):
the same choices, fewer searches, and nothing shared outside the block."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe.calibrate import calibrate, methods
from edgepipe.calibrate.histogram import TensorHistogram


class ArrayDataset:
    def __init__(self, x):
        self.x = np.asarray(x, np.float32)

    def __len__(self):
        return len(self.x)

    def sample(self, i):
        return {"x": self.x[i : i + 1]}


def reshaping_model() -> onnx.ModelProto:
    """x -> Conv -> Reshape -> Transpose -> Relu: the Reshape and Transpose outputs hold exactly the
    Conv output's values (the same histogram), the Relu output others."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "reshaping", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1, 4, 64], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_memoized_calibration_equals_the_plain_one_with_fewer_searches(monkeypatch):
    from edgepipe.calibrate.methods import mse

    calls = []
    original = mse.Mse.amax

    def counted(self, abs_counts, bin_width, absmax, settings):
        calls.append(1)
        return original(self, abs_counts, bin_width, absmax, settings)

    model = reshaping_model()
    data = ArrayDataset(np.random.default_rng(1).standard_normal((40, 3, 8, 8)))
    monkeypatch.setattr(methods, "memoized", lambda: _NoMemo())  # the plain computation, for reference
    plain = calibrate(model, data, {"method": "auto"})
    monkeypatch.undo()
    monkeypatch.setattr(mse.Mse, "amax", counted)
    memoized = calibrate(model, data, {"method": "auto"})
    assert memoized.to_json() == plain.to_json()
    assert memoized.tensors["r"].amax == memoized.tensors["c"].amax == memoized.tensors["t"].amax
    # x, c (shared by r and t) and y: three distinct histograms, each searched once overall plus once per
    # round; without the memo r and t would add their own searches
    searched = len(calls)
    calls.clear()
    monkeypatch.setattr(methods, "memoized", lambda: _NoMemo())
    calibrate(model, data, {"method": "auto"})
    assert searched < len(calls)


class _NoMemo:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_memo_lives_only_inside_the_block():
    hist = TensorHistogram("t", 64, 1)
    hist.update(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    method = methods.get("mse")
    counts, width, absmax = hist.abs_counts(), hist.bin_width, hist.observed_absmax()
    settings = {"percentile": 99.99}
    seen = []
    original = type(method).amax
    try:
        type(method).amax = lambda self, *args: seen.append(1) or original(self, *args)
        with methods.memoized():
            first = methods.threshold(method, counts, width, absmax, settings)
            assert methods.threshold(method, counts.copy(), width, absmax, settings) == first and len(seen) == 1
            other = counts.copy()
            other[0] += 1
            methods.threshold(method, other, width, absmax, settings)
            assert len(seen) == 2
        methods.threshold(method, counts, width, absmax, settings)
        methods.threshold(method, counts, width, absmax, settings)
        assert len(seen) == 4
    finally:
        type(method).amax = original
