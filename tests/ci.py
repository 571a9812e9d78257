"""Tests that need a system tool (sshd, qemu-user, Chromium) skip on a developer machine that
lacks it, but FAIL under CI=true: .ci/run installs every one of them, so a missing tool there
means the check did not run, and CI must not pass by skipping."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_tool(reason: str) -> None:
    """Skip (developer machine) or fail (CI=true) because `reason` says a tool is missing."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}; .ci/run must install it", pytrace=False)
    pytest.skip(reason)
