"""Every ONNX backend test whose ops a target claims, built through the CLI and judged against
the test's own expected outputs (tests/onnx_node_cases.py has the rules and tolerances).

Each case must end *matched* (fp32 within rtol 1e-4 and int8 within a few calibration-derived
output steps on arm-cpu; reference.onnx exact and Q/DQ within a few steps on jetson) or
*refused* (exit 2, one line naming the op or the input it cannot take, nothing written). A wrong
number or a crash fails the case by name. `python benchmarks/onnx_node_conformance.py` counts them.
"""

from __future__ import annotations

import functools

import pytest

from tests import onnx_node_cases

TARGETS = ("arm-cpu", "jetson")


@functools.lru_cache(maxsize=1)
def _cases() -> list:
    return onnx_node_cases.collect_cases()


def _params():
    for target in TARGETS:
        for case in _cases():
            if onnx_node_cases.claimed(case, target):
                yield pytest.param(target, case, id=f"{target}-{case.source}-{case.name}")


@pytest.mark.parametrize("target", TARGETS)
def test_every_claimed_op_type_has_cases(target):
    """The selection reaches every ONNX op type the target's table lists that the onnx tests use."""
    from edgepipe.targets import load_target

    listed = load_target(target).operators().op_types() - {"Constant"}
    used = {op for case in _cases() for domain, op in case.op_types if domain in ("", "ai.onnx")}
    selected = {op for case in _cases() if onnx_node_cases.claimed(case, target) for _, op in case.op_types}
    assert (listed & used) - selected == set()
    assert len(selected) >= 20


@pytest.mark.slow
@pytest.mark.parametrize(("target", "case"), list(_params()))
def test_onnx_backend_case(target, case, tmp_path):
    verdict = onnx_node_cases.run_case(case, target, tmp_path)
    assert verdict.status in ("matched", "refused"), f"{verdict.status}: {verdict.detail}"
