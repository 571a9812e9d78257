"""No traceback from any command without --debug: a bug in edgepipe (here injected into one stage
or command) is one line naming the stage, with its own exit code 3; --debug or EDGEPIPE_DEBUG=1
shows the traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgepipe.cli.main import INTERNAL_ERROR_EXIT, main
from tests.helpers import tiny_conv_model

# Runs the real entry point after replacing one stage function with one that fails like a bug would.
INJECT = """
import sys
import edgepipe.stages.simplify as simplify

def broken(model, check=True, acceptable=None):
    raise RuntimeError("tensor 'conv_out' has no producer\\nsecond line")

simplify.run_simplify = broken
from edgepipe.cli.main import main
main(sys.argv[1:])
"""


@pytest.fixture
def model_and_data(tmp_path):
    onnx.save(tiny_conv_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32))
    return ["build", "--model", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "--target",
            "arm-cpu", "--out", str(tmp_path / "out"), "--no-host-report"]


def _run(args, tmp_path, env=None):
    import os

    environment = {k: v for k, v in os.environ.items() if k != "EDGEPIPE_DEBUG"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", INJECT, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=environment)


def test_bug_in_a_stage_is_one_line_with_exit_code_3(tmp_path, model_and_data):
    result = _run(model_and_data, tmp_path)
    assert result.returncode == INTERNAL_ERROR_EXIT == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: internal error in simplify: RuntimeError: tensor 'conv_out' has no producer "
                     "(rerun with --debug)"], result.stderr
    assert "Traceback" not in result.stderr and "second line" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["--debug", "EDGEPIPE_DEBUG"])
def test_debug_shows_the_traceback(tmp_path, model_and_data, how):
    args = model_and_data + (["--debug"] if how == "--debug" else [])
    result = _run(args, tmp_path, {"EDGEPIPE_DEBUG": "1"} if how == "EDGEPIPE_DEBUG" else None)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr


@pytest.mark.parametrize("bug", [ValueError("bad io"),
                                 EOFError("Compressed file ended before the end-of-stream marker was reached")])
def test_bug_in_a_command_outside_the_pipeline_names_the_command(tmp_path, monkeypatch, capsys, bug):
    """One line naming the command, exit 3; --debug re-raises. An EOFError is one too: click reports
    any EOFError as "aborted" (exit 130), as if the user pressed Ctrl-D, but one from a reader that
    met a cut stream without naming the file is our bug."""
    from edgepipe import graph

    onnx.save(tiny_conv_model(), str(tmp_path / "m.onnx"))
    monkeypatch.delenv("EDGEPIPE_DEBUG", raising=False)

    def broken(model):
        raise bug

    monkeypatch.setattr(graph, "describe_io", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == INTERNAL_ERROR_EXIT
    assert capsys.readouterr().err.strip() == (f"error: internal error in inspect: {type(bug).__name__}: {bug} "
                                               "(rerun with --debug)")
    with pytest.raises(type(bug)):
        main(["--debug", "inspect", str(tmp_path / "m.onnx")])
