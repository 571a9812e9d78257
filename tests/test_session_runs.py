"""edgepipe/session_runs.py: samples in flight and reused output memory compute what one plain
`session.run` per feed computes (the reference: ONNX Runtime itself, run one feed at a time)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.session_runs import ALIGNMENT, ReusedOutputs, run_feeds


def conv_model() -> onnx.ModelProto:
    """x -> Conv -> Relu -> ReduceMean, with the Conv output, the Relu output and an int64 Shape exposed."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("ReduceMean", ["relu"], ["mean"], axes=[2, 3]),
             helper.make_node("Shape", ["relu"], ["shape"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(n, t, None) for n, t in
                           [("mean", TensorProto.FLOAT), ("conv", TensorProto.FLOAT), ("relu", TensorProto.FLOAT),
                            ("shape", TensorProto.INT64)]],
                          [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def feeds(count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_run_feeds_equals_one_plain_run_per_feed_in_order(streams):
    session = graph.make_session(conv_model())
    data = feeds(9)
    expected = [session.run(None, feed) for feed in data]
    got = run_feeds(session, data, streams=streams)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    sums = run_feeds(session, data, ["relu", "shape"], reduce=lambda out: (out[0].sum(dtype=np.float64), out[1].copy()),
                     streams=streams)
    assert [float(s) for s, _ in sums] == [float(e[2].sum(dtype=np.float64)) for e in expected]
    assert all(np.array_equal(shape, [1, 4, 8, 8]) for _, shape in sums)


def test_reused_outputs_write_the_same_values_into_the_same_aligned_memory():
    session = graph.make_session(conv_model())
    names = ["conv", "relu", "shape"]
    runner = ReusedOutputs(session, names)
    pointers = []
    for feed in feeds(5):
        got = runner.run(feed)
        expected = session.run(names, feed)
        for name, value in zip(names, expected):
            np.testing.assert_array_equal(got[name], value)
            assert got[name].dtype == value.dtype
        pointers.append({name: got[name].ctypes.data for name in names})
    assert pointers[1] == pointers[2] == pointers[4] != pointers[0]  # bound from the second run on
    assert all(pointer % ALIGNMENT == 0 for pointer in pointers[1].values())


def test_reused_outputs_fall_back_to_plain_runs_when_shapes_change():
    """An output whose shape depends on the values (NonZero) cannot be bound: plain runs, same values;
    a feed of another shape gets buffers of its own shape."""
    nodes = [helper.make_node("Greater", ["x", "t"], ["mask"]), helper.make_node("NonZero", ["mask"], ["where"]),
             helper.make_node("Relu", ["x"], ["relu"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("where", TensorProto.INT64, None),
                           helper.make_tensor_value_info("relu", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(0.5, np.float32), "t")])
    session = graph.make_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    runner = ReusedOutputs(session, ["where", "relu"])
    rng = np.random.default_rng(2)
    for rows in [3, 3, 3, 5, 5]:
        feed = {"x": rng.uniform(0, 1, (rows, 4)).astype(np.float32)}
        got = runner.run(feed)
        for name, value in zip(["where", "relu"], session.run(["where", "relu"], feed)):
            np.testing.assert_array_equal(got[name], value)
    assert not runner.usable
    resized = ReusedOutputs(session, ["relu"])
    for rows in [3, 3, 5, 5, 3]:
        feed = {"x": rng.uniform(-1, 1, (rows, 4)).astype(np.float32)}
        np.testing.assert_array_equal(resized.run(feed)["relu"], np.maximum(feed["x"], 0))
    assert resized.usable and resized.buffers["relu"].shape == (3, 4)


def test_built_ahead_yields_each_build_in_order_with_at_most_two_alive():
    """built_ahead builds the next item on a worker thread while the caller holds the current one:
    every item built once, in order, and never more than two builds finished and not yet dropped."""
    import threading
    import weakref

    from edgepipe.session_runs import built_ahead

    class Built:
        pass

    alive: list = []
    lock = threading.Lock()

    def build(item):
        with lock:
            alive[:] = [ref for ref in alive if ref() is not None]
            assert len(alive) <= 2
            built = Built()
            built.item = item
            alive.append(weakref.ref(built))
            return built

    seen = [b.item for b in built_ahead(build, list(range(7)))]
    assert seen == list(range(7))
    assert [b.item for b in built_ahead(build, [3])] == [3] and list(built_ahead(build, [])) == []
