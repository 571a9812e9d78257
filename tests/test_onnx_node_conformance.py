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
            if onnx_node_cases.is_claimed(case, target):
                yield pytest.param(target, case, id=f"{target}-{case.source}-{case.name}")


def test_the_suite_covers_every_claimed_op():
    """The selection is not empty and reaches every op type arm-cpu claims that the onnx tests use."""
    claimed = onnx_node_cases.claimed_op_types("arm-cpu")
    used = set().union(*(case.op_types for case in _cases()))
    selected = set().union(*(c.op_types for c in _cases() if onnx_node_cases.is_claimed(c, "arm-cpu")))
    assert (used & claimed) - {("", "Constant")} <= selected | {("", "Constant")}
    assert len([c for c in _cases() if onnx_node_cases.is_claimed(c, "arm-cpu")]) > 100


@pytest.mark.slow
@pytest.mark.parametrize(("target", "case"), list(_params()))
def test_onnx_backend_case(target, case, tmp_path):
    verdict = onnx_node_cases.run_case(case, target, tmp_path)
    assert verdict.status in ("matched", "refused"), f"{verdict.status}: {verdict.detail}"
