"""Accuracy of a candidate int8 .tflite on the eval set, measured in the real interpreter.

The mixed-precision planner ranks layers with ONNX Runtime Q/DQ, which quantizes only the inputs
of weighted ops; a full-integer TFLite model quantizes every tensor, so a float island that fixes
the Q/DQ model can still fail on the device's kernels. The planner therefore confirms each
candidate float set with this evaluator: build the .tflite with those float nodes, run it in
LiteRT (XNNPACK, like the device) on the eval samples, compare with the FP32 model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepipe import graph, quantmath
from edgepipe.backends.tflite.build import INT8_FILE, build_tflite
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite


def tflite_evaluator(model, calibration, dataset, options: dict | None = None, max_samples: int | None = 300):
    """A callable(float_nodes, int16_nodes=()) -> metrics dict (results.json accuracy keys) for the
    planner: `float_nodes` lowered in float, `int16_nodes` with int16 activations (16x8), the rest int8."""
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    feeds = [dataset.sample(i) for i in range(count)]
    session = graph.make_session(model)
    output_names = [o.name for o in model.graph.output]
    references = [dict(zip(output_names, session.run(output_names, feed))) for feed in feeds]
    labels = None if dataset.labels is None else np.asarray(dataset.labels[:count])
    first = output_names[0]

    def evaluate(float_nodes, int16_nodes=()) -> dict:
        with tempfile.TemporaryDirectory(prefix="edgepipe-plan-") as tmp:
            result = build_tflite(model, calibration, Path(tmp), {**(options or {}), "float_nodes": set(float_nodes),
                                                                  "int16_nodes": set(int16_nodes)})
            interpreter = make_interpreter(Path(tmp) / INT8_FILE)
            outputs = [run_tflite(Path(tmp) / INT8_FILE, result["io"], feed, interpreter=interpreter)
                       for feed in feeds]
        # argmax over the last axis: one decision per sample (classifier) or per position (sequence)
        got = np.concatenate([o[first].reshape(-1, o[first].shape[-1]) for o in outputs])
        want = np.concatenate([r[first].reshape(-1, r[first].shape[-1]) for r in references])
        metrics = {
            "sqnr_db": min(quantmath.sqnr_db(np.concatenate([r[n].ravel() for r in references]),
                                             np.concatenate([o[n].ravel() for o in outputs])) for n in output_names),
            "cosine": min(quantmath.cosine(np.concatenate([r[n].ravel() for r in references]),
                                           np.concatenate([o[n].ravel() for o in outputs])) for n in output_names),
            "argmax_agreement": float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))),
            "top1": None,
            "fp32_top1": None,
            "sequence_agreement": quantmath.ctc_sequence_agreement(
                np.concatenate([r[first] for r in references]), np.concatenate([o[first] for o in outputs])),
        }
        if labels is not None and len(got) == len(labels):  # one decision per sample: a classifier
            metrics["top1"] = float(np.mean(got.argmax(axis=1) == labels))
            metrics["fp32_top1"] = float(np.mean(want.argmax(axis=1) == labels))
        if not np.isfinite(metrics["sqnr_db"]):
            metrics["sqnr_db"] = None
        return metrics

    return evaluate
