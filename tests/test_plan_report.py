"""The planner's int8 share counts what runs on int8, including the float islands XNNPACK tabulates.

PP-LCNetV3's learnable affine blocks (`/ 6`, `* a`, `+ b` with one scale and one shift) lower to
DEQUANTIZE, MUL, ADD, QUANTIZE in an int8 .tflite: float ops in the file, one int8 lookup table
under XNNPACK (ops/affine.py). The report counts such an island as int8 only while both of its
ends are int8 in the plan: next to a float node it reads or writes float, a float computation.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.accuracy.plan_report import int8_ops, summary_line
from edgepipe.accuracy.sensitivity import VariantEvaluator
from edgepipe.backends.tflite import build_tflite
from tests.test_sensitivity import ARM
from tests.tflite_harness import make_model, minmax_calibration, structured_inputs

C = 6
RNG = np.random.default_rng(3)
CHAIN = ("div_d", "mul_m", "add_y")


def learnable_affine_between_convs():
    """x -> conv1 -> LeakyRelu -> / 6 -> * a -> + b -> conv2 -> z (the chain between two int8 convs)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c"], ["t"], name="act", alpha=0.1),
             helper.make_node("Div", ["t", "six"], ["d"], name="div_d"),
             helper.make_node("Mul", ["d", "gain"], ["m"], name="mul_m"),
             helper.make_node("Add", ["m", "bias"], ["y"], name="add_y"),
             helper.make_node("Conv", ["y", "w2"], ["u"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["u"], ["z"], name="relu2")]
    constants = {"w1": (RNG.normal(size=(C, 3, 3, 3)) * 0.4).astype(np.float32),
                 "w2": (RNG.normal(size=(C, C, 3, 3)) * 0.3).astype(np.float32),
                 "six": np.float32(6.0), "gain": np.float32(1.7), "bias": np.float32(0.3)}
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["z"], constants)


class Feeds:
    def __init__(self, feeds):
        self.feeds = feeds

    def __len__(self):
        return len(self.feeds)

    def sample(self, index):
        return self.feeds[index]


@pytest.fixture(scope="module")
def evaluator():
    model = learnable_affine_between_convs()
    feeds = structured_inputs(model, 4, seed=7)
    return model, VariantEvaluator(model, minmax_calibration(model, feeds), Feeds(feeds), target=ARM,
                                   max_samples=4, use_placement=True)


def test_the_placement_names_the_tabulated_island(evaluator, tmp_path):
    model, ev = evaluator
    assert {tuple(sorted(nodes)) for nodes in ev.placement.tables.values()} == {tuple(sorted(CHAIN))}
    assert not set(CHAIN) & ev.placement.int8_nodes  # float ops in the file ...
    built = build_tflite(model, ev.calibration, tmp_path, {"target": "arm-cpu"})
    assert built["float_nodes"] == ["add_y"]  # ... as the lowering itself reports


def test_an_island_between_int8_ops_counts_as_int8(evaluator):
    model, ev = evaluator
    counts = int8_ops(model, ev, set())
    assert counts["int8_table_ops"] == len(CHAIN)
    assert counts["int8_ops"] == len(ev.placement.int8_nodes) + len(CHAIN)
    assert counts["int8_ops"] + counts["float_ops"] == counts["ops"] == len(model.graph.node)


@pytest.mark.parametrize("floated", [{"conv2", "relu2"}, {"conv1", "act"}])
def test_an_island_with_a_float_end_is_float(evaluator, floated):
    """Its reader float (it writes float) or its producer float (it reads float): a float
    computation, not a table."""
    model, ev = evaluator
    all_int8 = int8_ops(model, ev, set())
    counts = int8_ops(model, ev, floated)
    assert counts["int8_table_ops"] == 0
    assert counts["int8_ops"] == all_int8["int8_ops"] - len(CHAIN) - len(floated & ev.placement.int8_nodes)


def test_naming_an_island_float_changes_neither_the_file_nor_the_count(evaluator, tmp_path):
    """A float request for a member applies to the island, which is float already: the same
    .tflite, so the same table."""
    model, ev = evaluator
    plain = build_tflite(model, ev.calibration, tmp_path / "plain", {"target": "arm-cpu"})
    named = build_tflite(model, ev.calibration, tmp_path / "named", {"target": "arm-cpu", "float_nodes": {"mul_m"}})
    assert named["op_histogram"] == plain["op_histogram"] and named["float_nodes"] == plain["float_nodes"]
    assert int8_ops(model, ev, {"mul_m"}) == int8_ops(model, ev, set())


def test_the_build_line_says_how_many_int8_ops_are_tables(evaluator):
    model, ev = evaluator
    counts = int8_ops(model, ev, set())
    summary = {"met": True, "search_seconds": 1.0, "evaluations": {}, **counts}
    assert f"{counts['int8_ops']}/{counts['ops']} ops int8" in summary_line(summary)
    assert f"{len(CHAIN)} of them lookup tables" in summary_line(summary)
    assert "lookup tables" not in summary_line({**summary, **int8_ops(model, ev, {"conv2", "relu2"})})
