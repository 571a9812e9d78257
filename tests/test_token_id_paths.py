"""Token ids that reach an embedding through value-preserving ops (an int32 input Cast to int64, as
many exporters write, an Unsqueeze/Reshape, an Add of a padding offset) are range-checked at build
time like ids read directly, with the sample and the table named; in-range ids still build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli

VOCAB, OFFSET = 50, 2


def _export(path: Path, offset: int) -> Path:
    import torch

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(VOCAB, 8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, ids):  # int32 ids from the app, int64 indices for the lookup
            tokens = ids.long().reshape(1, -1) + offset if offset else ids.long().unsqueeze(0)
            return self.fc(self.emb(tokens).mean(dim=1))

    ids = torch.zeros(6, dtype=torch.int32)
    torch.onnx.export(Embedder().eval(), (ids,), str(path), input_names=["ids"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return path


@pytest.mark.parametrize("offset", [0, OFFSET])
def test_ids_through_cast_and_offset_are_range_checked_at_build_time(tmp_path, offset):
    import onnx

    model = _export(tmp_path / "embedder.onnx", offset)
    ops = [n.op_type for n in onnx.load(str(model)).graph.node]
    assert "Cast" in ops and ("Add" in ops) == bool(offset)  # the exporter's own path to the Gather
    rng = np.random.default_rng(0)
    good = rng.integers(0, VOCAB - offset, (24, 6)).astype(np.int32)
    np.savez(tmp_path / "good.npz", ids=good)
    built = run_cli("build", "--model", str(model), "--calib", "good.npz", "--target", "arm-cpu", "--out", "ok",
                    "--no-host-report", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    from edgepipe import graph
    from tests.helpers import deployed_outputs, sqnr_db

    session = graph.make_session(onnx.load(str(model)))
    feeds = [{"ids": row} for row in rng.integers(0, VOCAB - offset, (16, 6)).astype(np.int32)]
    reference = np.concatenate([session.run(None, feed)[0] for feed in feeds])
    got = np.concatenate([deployed_outputs(tmp_path / "ok", feed)[0] for feed in feeds])
    assert sqnr_db(reference, got) > 15  # LiteRT runs the lookup; int8 noise of this untrained net: 20 dB here

    for bad_id in (VOCAB - offset, -offset - 1):
        bad = good.copy()
        bad[7, 2] = bad_id
        np.savez(tmp_path / "bad.npz", ids=bad)
        result = run_cli("build", "--model", str(model), "--calib", "bad.npz", "--target", "arm-cpu",
                         "--out", "bundle", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: calibration sample 7: input 'ids' holds token id {bad_id}, outside the embedding table of "), lines
        assert f"ids {-offset}..{VOCAB - 1 - offset}" in lines[0] or (not offset and f"ids 0..{VOCAB - 1}" in lines[0])
        assert not (tmp_path / "bundle").exists()


def test_ids_a_graph_may_drop_or_replace_are_not_checked():
    """Concat keeps every id (checked); Where may replace a -1 pad before the lookup (not checked: refusing
    an id the table never sees would refuse a valid model)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgepipe.token_ids import embedding_tables

    nodes = [helper.make_node("Cast", ["ids"], ["wide"], to=TensorProto.INT64),
             helper.make_node("Concat", ["cls", "wide"], ["with_cls"], axis=1),
             helper.make_node("Gather", ["table", "with_cls"], ["e"], name="emb"),
             helper.make_node("Where", ["keep", "wide", "zero"], ["masked"]),
             helper.make_node("Gather", ["small_table", "masked"], ["e2"], name="emb_masked")]
    inits = [numpy_helper.from_array(np.array([[1]], np.int64), "cls"),
             numpy_helper.from_array(np.zeros((30, 4), np.float32), "table"),
             numpy_helper.from_array(np.zeros((3, 4), np.float32), "small_table"),
             numpy_helper.from_array(np.array(True), "keep"), numpy_helper.from_array(np.array(0, np.int64), "zero")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 5])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("e", "e2")], inits)
    tables = embedding_tables(helper.make_model(graph))
    assert {name: (r.node, r.low, r.high) for name, r in tables.items()} == {"ids": ("emb", 0, 29)}
