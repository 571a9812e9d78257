"""Recurrences over more than wide_range.LONG_RECURRENCE_STEPS step(s) run float on arm-cpu, down to
short ones like the 32-step bidirectional LSTMs of a character-level text model (text2tashkeel's Rawi diacritizer:
its int8 cell state, requantized at every step, cost 6 dB at its output). Calibration is the real
`calibrate()`; ONNX Runtime on the float model is the reference; the .tflite runs in LiteRT."""

from __future__ import annotations

import numpy as np
from onnx import helper

from edgepipe.backends.tflite import build_tflite, wide_range
from edgepipe.backends.tflite.runtime import run_tflite
from edgepipe.calibrate import calibrate
from tests.helpers import ArrayDataset
from tests.tflite_harness import delegate_partitions, make_model, run_onnx

RNG = np.random.default_rng(14)
SIZE, HIDDEN = 6, 8


def _bilstm(steps: int):
    """x [1, steps, SIZE] -> Transpose -> bidirectional LSTM -> y [steps, 2, 1, HIDDEN]."""
    init = {"w": RNG.normal(scale=0.6, size=(2, 4 * HIDDEN, SIZE)).astype(np.float32),
            "r": RNG.normal(scale=0.6, size=(2, 4 * HIDDEN, HIDDEN)).astype(np.float32),
            "b": RNG.normal(scale=0.2, size=(2, 8 * HIDDEN)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["x_seq"], name="seq_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x_seq", "w", "r", "b"], ["y"], name="bilstm", hidden_size=HIDDEN,
                              direction="bidirectional")]
    return make_model(nodes, {"x": [1, steps, SIZE]}, ["y"], init)


def _build(steps: int, tmp_path):
    model = _bilstm(steps)
    x = RNG.normal(size=(24, steps, SIZE)).astype(np.float32)
    calibration = calibrate(model, ArrayDataset(x[:16]), {"method": "minmax"})
    built = build_tflite(model, calibration, tmp_path, {"target": "arm-cpu"})
    return model, built, x[16:]


def test_a_32_step_bidirectional_lstm_runs_float(tmp_path):
    """32 steps (64 was the bound before): both directions are float, one XNNPACK partition, and the
    output is ONNX Runtime's up to float rounding (an int8 recurrence is over 1e-3 off: below)."""
    model, built, evals = _build(32, tmp_path)
    assert built["long_recurrences"] == {"bilstm": 32}
    path = tmp_path / "model.tflite"
    assert len(delegate_partitions(path)) == 1
    for sample in evals:
        reference = run_onnx(model, {"x": sample[None]})["y"]
        got = run_tflite(path, built["io"], {"x": sample[None]})["y"]
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4)


def test_a_recurrence_within_the_bound_stays_int8(tmp_path):
    """A recurrence of at most LONG_RECURRENCE_STEPS step(s) (its state never read back) keeps its
    int8 kernels."""
    model, built, evals = _build(wide_range.LONG_RECURRENCE_STEPS, tmp_path)
    assert built["long_recurrences"] == {}
    path = tmp_path / "model.tflite"
    errors = [np.abs(run_tflite(path, built["io"], {"x": s[None]})["y"] - run_onnx(model, {"x": s[None]})["y"]).max()
              for s in evals]
    assert max(errors) > 1e-3  # int8 rounding, not float's
