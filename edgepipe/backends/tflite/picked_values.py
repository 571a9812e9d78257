"""Arithmetic on values picked at computed positions runs in float: a model's in-graph decoding.

Why: after an ArgMax (or TopK) a model often reads a few values around the winner and decodes them
(SwiftF0: the 9 logits around the peak bin -> Softmax -> weights of the bins' log frequencies,
read from a constant table at the same indices -> sum -> Exp gives Hz). On int8 grids that
decoding loses what the user reads: a log-frequency table on a grid that must include 0 has steps
of 3 % (52 cents), and an Exp output in Hz on a linear grid steps of 8 Hz. These nodes handle a
few values per frame, and the GATHER / GATHER_ND that pick them run on LiteRT's builtin kernels
in every dtype (XNNPACK has neither), so float costs nothing in speed or partitions.

Picked indices: the outputs of ArgMax / ArgMin / TopK's indices and integer nodes computed from
them (offsets, clamps). The Gather / GatherElements / GatherND nodes that read such indices, and
every float node downstream of them, are kept float. An embedding lookup at the model's token
ids (graph inputs) picks nothing here and keeps its exact int8 table.
"""

from __future__ import annotations

INDEX_PRODUCERS = {"ArgMax": (0,), "ArgMin": (0,), "TopK": (1,)}
GATHERS = frozenset({"Gather", "GatherElements", "GatherND"})


def decoding_nodes(ctx) -> set[str]:
    """Names of the float nodes that read values picked at computed indices, and their readers."""
    if not ctx.quantized:
        return set()
    nodes = list(ctx.model.graph.node)
    picked: set[str] = set()
    chosen: set[str] = set()
    floats: set[str] = set()  # float tensors written by chosen nodes
    for node in nodes:  # graph order is topological
        if node.op_type in INDEX_PRODUCERS:
            picked.update(node.output[k] for k in INDEX_PRODUCERS[node.op_type] if k < len(node.output))
            continue
        outputs = [o for o in node.output if o]
        if not outputs:
            continue
        integer_out = all(ctx.onnx_kind(o) == "int32" for o in outputs)
        if integer_out and any(name in picked for name in node.input):
            picked.update(outputs)
            continue
        float_out = any(ctx.onnx_kind(o) == "float32" for o in outputs)
        reads_picked = node.op_type in GATHERS and len(node.input) > 1 and node.input[1] in picked
        if float_out and (reads_picked or any(name in floats for name in node.input)):
            chosen.add(node.name)
            floats.update(o for o in outputs if ctx.onnx_kind(o) == "float32")
    return chosen
