"""What the CLI prints of a hostile name cannot drive the terminal: no carriage return, backspace,
escape sequence or bidi override reaches the screen raw, and a warning stays one line. Only the
progress bar writes a carriage return."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import onnx

from edgepipe.cli.main import InertStream, TtyProgress
from edgepipe.errors import inert_text, one_line
from tests.helpers import run_cli, tiny_conv_model

HOSTILE = "c\rOK \x1b[2J\x1b]0;title\x07\bX\u202egnp.exe\u2066\nerror: forged line"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _hostile_model(path):
    """The tiny conv with zero conv weights, so its intermediate tensors are constant and warned by name."""
    model = tiny_conv_model()
    for init in model.graph.initializer:
        if init.name in ("w", "b"):
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(onnx.numpy_helper.to_array(init).shape, np.float32),
                                                       init.name))
    renames = {name: f"{name}{HOSTILE}" for name in ("c", "r", "g", "f")}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.name += HOSTILE
    onnx.save(model, str(path))


def test_warnings_and_inspect_print_hostile_names_inert(tmp_path):
    _hostile_model(tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    built = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "arm-cpu",
                    "--out", "out", "--no-host-report", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    warnings = [line for line in built.stderr.splitlines() if line.startswith("warning:")]
    hostile_warnings = [line for line in warnings if "title" in line]
    assert hostile_warnings, built.stderr
    for line in hostile_warnings:
        assert "\\r" in line and "\\x1b[2J" in line and "\\x1b]0;title\\x07" in line and "\\x08" in line
        assert "\\u202e" in line and "\\u2066" in line and "\\nerror: forged line" in line
    assert not any(line.startswith("error: forged") for line in built.stderr.splitlines())
    assert not RAW_CONTROLS.search(built.stdout + built.stderr)

    inspected = run_cli("inspect", "model.onnx", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert not RAW_CONTROLS.search(inspected.stdout + inspected.stderr)


def test_only_the_progress_bar_writes_a_carriage_return(monkeypatch):
    raw = io.StringIO()
    raw.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", InertStream(raw))
    sys.stderr.write(f"warning: {HOSTILE}\n")
    assert "\r" not in raw.getvalue() and "\x1b" not in raw.getvalue() and "\b" not in raw.getvalue()
    raw.seek(0)
    raw.truncate(0)
    TtyProgress("calib\rrating", 4)(2)
    assert raw.getvalue().startswith("\r") and raw.getvalue().count("\r") == 1 and "calib\\rrating" in raw.getvalue()


def test_one_line_and_inert_text_escape_every_control():
    assert one_line(HOSTILE) == ("c\\rOK \\x1b[2J\\x1b]0;title\\x07\\x08X\\u202egnp.exe\\u2066\\nerror: forged line")
    assert inert_text("a\tb\nc") == "a\tb\nc"  # output is made of lines and columns
    for control in ("\u200e", "\u200f", "\u061c", "\x85", "\x9b", "\u2028", "\u2029"):
        assert control not in inert_text(f"x{control}y")


def test_tables_of_results_keep_each_row_one_line():
    from edgepipe.delivery.fleet import HostOutcome, format_table

    table = format_table([HostOutcome(name="edge1", attempts=1, error=f"device said {HOSTILE}")])
    assert len(table.splitlines()) == 2 and not RAW_CONTROLS.search(table)


def test_run_py_reports_a_planted_files_name_inert(tmp_path):
    import subprocess

    onnx.save(tiny_conv_model(), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    built = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "arm-cpu", "--out", "out",
                    "--no-host-report", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (tmp_path / "out" / f"planted{HOSTILE}.txt").write_text("")
    ran = subprocess.run([sys.executable, "run.py"], cwd=tmp_path / "out", capture_output=True, text=True, timeout=120)
    assert ran.returncode == 3 and "not listed in SHA256SUMS" in ran.stderr
    assert "planted" in ran.stderr and "\\x1b]0;title\\x07" in ran.stderr and "\\nerror: forged line" in ran.stderr
    assert not RAW_CONTROLS.search(ran.stderr) and not any(line.startswith("error: forged")
                                                          for line in ran.stderr.splitlines())


def test_inspect_note_on_a_dynamic_input_keeps_its_name_on_one_line(tmp_path):
    """The "input(s) ... have dynamic dims" note printed the input's name raw: a line break in it
    put a forged `error:` line on the screen."""
    name = "x\nerror: forged line"
    x = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", [name], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(tmp_path / "model.onnx"))
    inspected = run_cli("inspect", "model.onnx", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert not [line for line in inspected.stdout.splitlines() if line.startswith("error")], inspected.stdout
    assert "note: input(s) x\\nerror: forged line have dynamic dims" in inspected.stdout
