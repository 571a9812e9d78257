"""Einsum decomposed into Transpose / Reshape / MatMul / ReduceSum (edgepipe/einsum.py), checked
against ONNX Runtime running the original Einsum node, and an einsum attention block through the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe import graph
from edgepipe.einsum import decompose_einsums
from tests.helpers import deployed_outputs, run_cli, sqnr_db

RNG = np.random.default_rng(9)


def _einsum_model(equation, shapes, opset=17):
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], name="the_einsum", equation=equation)
    graph_proto = helper.make_graph([node], "einsum",
                                    [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, shapes)],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return graph.infer_shapes(model)


CASES = [
    ("bid,bjd->bij", [[2, 4, 8], [2, 5, 8]]),  # attention scores
    ("bij,bjd->bid", [[2, 4, 5], [2, 5, 8]]),  # attention output
    ("bhqd,bhkd->bhqk", [[1, 2, 3, 4], [1, 2, 5, 4]]),
    ("ij,jk", [[3, 4], [4, 5]]),  # implicit output
    ("...id,...jd->...ij", [[2, 3, 4, 6], [2, 3, 5, 6]]),
    ("bi,bi->b", [[3, 7], [3, 7]]),
    ("i,j->ij", [[3], [4]]),
    ("bnd,dk->bnk", [[2, 3, 4], [4, 6]]),
    ("...ij,...jk->...ik", [[1, 4, 5], [3, 5, 6]]),  # an ellipsis dim broadcasts
    ("abc,cd->dba", [[2, 3, 4], [4, 5]]),  # output order differs from the product's
    ("bij,bkj->bik", [[2, 3, 4], [2, 5, 4]]),
    ("bik,b->bi", [[2, 3, 4], [2]]),  # an index only one operand has, summed first
    ("bij->bji", [[2, 3, 4]]),
    ("ij->i", [[3, 4]]),
    ("ij->", [[3, 4]]),
]


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize("equation,shapes", CASES, ids=[c[0] for c in CASES])
def test_decomposition_computes_what_einsum_computes(equation, shapes, opset):
    model = _einsum_model(equation, shapes, opset)
    decomposed = onnx.ModelProto()
    decomposed.CopyFrom(model)
    assert decompose_einsums(decomposed) == 1
    assert not any(n.op_type == "Einsum" for n in decomposed.graph.node)
    onnx.checker.check_model(decomposed, full_check=True)
    feed = {f"x{i}": RNG.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
    expected = graph.make_session(model).run(None, feed)[0]
    got = graph.make_session(decomposed).run(None, feed)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, np.einsum(equation, *feed.values()), rtol=1e-5, atol=1e-5)  # numpy agrees too


@pytest.mark.parametrize("equation,shapes", [("ii->i", [[3, 3]]), ("ij,jk,kl->il", [[2, 3], [3, 4], [4, 5]]),
                                             ("bij,bjk->bik", [[1, 4, 5], [3, 5, 6]])])  # labeled dims disagree
def test_diagonals_and_three_operands_are_left_for_the_target_to_name(equation, shapes):
    model = _einsum_model(equation, shapes)
    assert decompose_einsums(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Einsum"]


def test_einsum_attention_builds_fully_delegated_on_arm_cpu(tmp_path):
    torch = pytest.importorskip("torch")

    class EinsumAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))

        def forward(self, x):
            scores = torch.einsum("bid,bjd->bij", self.q(x), self.k(x)).softmax(-1)
            return torch.einsum("bij,bjd->bid", scores, self.v(x))

    torch.manual_seed(0)
    path = tmp_path / "attention.onnx"
    torch.onnx.export(EinsumAttention().eval(), (torch.randn(1, 8, 16),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    calib = RNG.normal(size=(64, 8, 16)).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npy"),
                     "--out", str(out), "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK int8: 1 partition; no op on builtin kernels" in result.stderr + result.stdout
    session = graph.make_session(onnx.load(str(path)))
    sample = calib[:1]
    reference = session.run(None, {"x": sample})[0]
    assert sqnr_db(reference, deployed_outputs(out, {"x": sample})[0]) > 20


def test_two_unnamed_einsums_get_distinct_tensor_names():
    """ONNX allows empty (and repeated) node names: the tensors each Einsum's decomposition adds
    must still be unique, or the second overwrites the first's constants and outputs."""
    nodes = [helper.make_node("Einsum", ["a", "b"], ["ab"], equation="ij,jk->ik"),
             helper.make_node("Einsum", ["ab", "c"], ["y"], equation="ik,kl->il")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
              (("a", [2, 3]), ("b", [3, 4]), ("c", [4, 5]))]
    model = helper.make_model(helper.make_graph(nodes, "two", inputs,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    decomposed = onnx.ModelProto()
    decomposed.CopyFrom(model)
    assert decompose_einsums(decomposed) == 2
    onnx.checker.check_model(decomposed, full_check=True)
    feed = {"a": RNG.normal(size=(2, 3)).astype(np.float32), "b": RNG.normal(size=(3, 4)).astype(np.float32),
            "c": RNG.normal(size=(4, 5)).astype(np.float32)}
    np.testing.assert_allclose(graph.make_session(decomposed).run(None, feed)[0],
                               feed["a"] @ feed["b"] @ feed["c"], rtol=1e-5, atol=1e-5)
