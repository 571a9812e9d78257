"""Checks that refuse a model for a target before any output is written: ops the target cannot run
(control flow and custom domains from the file alone, before data is asked for), ops onnxsim
introduced, and `precision.int16_nodes` names."""

from __future__ import annotations

from pathlib import Path

from edgepipe import graph
from edgepipe.errors import UnsupportedOpError, UserError


def check_structure(source: str, target) -> None:
    """UnsupportedOpError for the first node of an .onnx file that no simplification can take out of
    the target's way, control flow or a custom domain: such a model is refused for what it is,
    not asked for the calibration data it could never use."""
    from edgepipe.backends.support import CONTROL_FLOW, canonical_domain, operator_problem, opsets, qualified, walk_nodes
    from edgepipe.dequantize import DYNAMIC_OPS
    from edgepipe.ml_ops import ML_DOMAIN, REWRITTEN_ML_OPS
    from edgepipe.qoperator import QOPERATOR_OP_TYPES

    from edgepipe.stages.export import TORCH_FILE_SUFFIXES

    if Path(str(source)).suffix in TORCH_FILE_SUFFIXES and not Path(str(source)).is_file():
        raise UserError(f"{source}: no such file; pass an existing model file with --model")
    if not str(source).endswith(".onnx"):
        return
    model = graph.load_model(source, load_external=False)  # a missing file is named before the data
    table, versions = target.operators(), opsets(model)
    accepted_control_flow = False
    for name, node, _ in walk_nodes(model):
        domain = canonical_domain(node.domain)
        if node.op_type in DYNAMIC_OPS + QOPERATOR_OP_TYPES:  # export rewrites them into float layers
            continue  # (edgepipe/dequantize.py); one it cannot is named by the check after export
        if domain == ML_DOMAIN and node.op_type in REWRITTEN_ML_OPS:  # export writes it as standard ops
            continue  # (edgepipe/ml_ops.py)
        if (domain == "" and node.op_type in CONTROL_FLOW) or domain not in table.domains():
            reason = operator_problem(node, versions, table, target.name)
            if reason is None:  # control flow the target's table registers (TensorRT): its own rules below
                accepted_control_flow = True
                continue
            raise UnsupportedOpError(name, qualified(node.domain, node.op_type), target.name, reason)
    for name, op_type, reason in target.supports(model) if accepted_control_flow else ():
        if op_type in CONTROL_FLOW:  # e.g. TensorRT: If branches of unequal rank
            raise UnsupportedOpError(name, op_type, target.name, reason)


def foldable_batchnorms(model) -> set[str]:
    """BatchNormalization nodes with constant parameters: the fold stage may rewrite them, so the
    check before it skips them (one with a parameter fed at run time is checked, and refused, then)."""
    return {node.name or node.op_type for node in model.graph.node if node.op_type == "BatchNormalization"
            and all(graph.constant_value(model, name) is not None for name in node.input[1:5])}


def introduced_ops_check(target):
    """For run_simplify: refuse a simplified graph in which onnxsim created an op type the exported
    graph does not have and the target cannot run (the user's own nodes would have built)."""
    from edgepipe.backends import support

    def problem(original, simplified) -> str:
        present = {node.op_type for _, node, _ in support.walk_nodes(original)}
        introduced = sorted({op_type for _, op_type, _ in target.supports(simplified) if op_type not in present})
        return f"onnxsim fused nodes into {', '.join(introduced)}, which {target.name} cannot run" if introduced else ""
    return problem


def check_target_support(model, target, ignore: set[str] = frozenset()) -> None:
    """UnsupportedOpError naming the first node the target cannot run (before any file is written);
    nodes named in `ignore` are left to the check after the fold."""
    from edgepipe.qoperator import QOPERATOR_OP_TYPES

    unsupported = [entry for entry in target.supports(model) if entry[0] not in ignore]
    # a QOperator node export could not rewrite leaves Q/DQ nodes around it: name the node that is the cause
    unsupported.sort(key=lambda entry: entry[1].rpartition("::")[2] not in QOPERATOR_OP_TYPES)
    if unsupported:
        node, op_type, reason = unsupported[0]
        more = f" (and {len(unsupported) - 1} more; run `edgepipe inspect`)" if len(unsupported) > 1 else ""
        raise UnsupportedOpError(node, op_type, target.name, f"{reason}{more}")


def check_int16_nodes(model, precision) -> set[str]:
    """`precision.int16_nodes` as a set, each naming a node of the model and none kept float."""
    import onnx

    named = onnx.ModelProto()
    named.CopyFrom(model)
    names = {node.name for node in graph.ensure_node_names(named).graph.node}  # the names the lowering sees
    for name in precision.int16_nodes:
        if name not in names:
            raise UserError(f"precision.int16_nodes: no node named '{name}' in the model (after simplify and "
                            "fold); fix the name or remove it")
        if name in precision.float_nodes:
            raise UserError(f"precision.int16_nodes: node '{name}' is also in precision.float_nodes; keep it in one")
    return set(precision.int16_nodes)
