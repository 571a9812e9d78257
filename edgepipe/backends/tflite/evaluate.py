"""Accuracy of a candidate int8 .tflite on the eval set, measured in the real interpreter.

The mixed-precision planner ranks layers with ONNX Runtime Q/DQ, which quantizes only the inputs
of weighted ops; a full-integer TFLite model quantizes every tensor, so a float island that fixes
the Q/DQ model can still fail on the device's kernels. The planner therefore confirms each
candidate float set with this evaluator: build the .tflite with those float nodes, run it in
LiteRT (XNNPACK, like the device) on the eval samples, compare with the FP32 model.

Each call is on the planner's critical path (its prune makes dozens), so the FP32 side is done
once: ONNX Runtime's outputs, their signal power and norms; a call lowers only the int8 model
and folds each sample into running sums (SQNR and cosine over a whole sequence head's logits
would otherwise dominate the call). `stop(optimistic_metrics)` lets the planner reject early:
after each chunk of samples it sees the metrics as they would be if every remaining sample agreed
with FP32 perfectly, an exact upper bound, so stopping when even that fails the budget gives
the same accept/reject answer as the full run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgepipe import graph, quantmath
from edgepipe.backends.tflite import writer
from edgepipe.backends.tflite.build import BACKEND, check_supported, lower_model
from edgepipe.backends.tflite.model_io import describe_io
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite

STOP_CHUNK = 16  # samples between two early-stop checks


class Reference:
    """FP32 outputs of the eval samples ({output name: array} per sample, the first output is the
    one argmax decisions are read from) and what every comparison with them needs."""

    def __init__(self, outputs: list[dict], labels=None):
        self.names = list(outputs[0])
        self.outputs = outputs
        self.power = {n: sum(float(np.sum(np.square(r[n], dtype=np.float64))) for r in self.outputs)
                      for n in self.names}
        self.size = {n: sum(r[n].size for r in self.outputs) for n in self.names}
        first = self.first = self.names[0]
        self.steps = [len(quantmath.class_decisions(r[first])) for r in self.outputs]  # argmax decisions per sample
        self.decisions = sum(self.steps)
        self.sequence = all(r[first].ndim == 3 for r in self.outputs)
        self.rows = [r[first].shape[0] for r in self.outputs]  # CTC readings per sample
        self.labels = labels
        self.classifier = labels is not None and self.decisions == len(labels)  # one decision per sample
        self.fp32_top1 = (float(np.mean([r[first].argmax() == y for r, y in zip(self.outputs, labels)]))
                          if self.classifier else None)


class _Running:
    """Per-sample sums of one candidate against the reference, in eval order."""

    def __init__(self, reference: Reference):
        self.ref = reference
        self.count = 0
        self.noise = {n: 0.0 for n in reference.names}
        self.dot = {n: 0.0 for n in reference.names}
        self.test_power = {n: 0.0 for n in reference.names}
        self.agree, self.correct = 0, 0
        self.readings: list[float] = []

    def add(self, output: dict) -> None:
        want = self.ref.outputs[self.count]
        for n in self.ref.names:
            a = want[n].astype(np.float64).ravel()
            b = np.asarray(output[n], dtype=np.float64).ravel()
            self.noise[n] += float(np.sum(np.square(a - b)))
            self.dot[n] += float(np.dot(a, b))
            self.test_power[n] += float(np.dot(b, b))
        first = self.ref.first
        got = quantmath.class_decisions(np.asarray(output[first]))
        self.agree += int(np.sum(got == quantmath.class_decisions(want[first])))
        if self.ref.classifier:
            self.correct += int(got[0] == self.ref.labels[self.count])
        if self.ref.sequence:
            self.readings += [quantmath.ctc_sequence_agreement(want[first][row:row + 1], output[first][row:row + 1])
                              for row in range(want[first].shape[0])]
        self.count += 1

    def optimistic(self) -> dict:
        """The metrics if every sample not yet run agreed with FP32 exactly (never lower than the
        final ones: each remaining sample can only add agreement)."""
        total = len(self.ref.outputs)
        missing = total - self.count
        return {"sqnr_db": None, "cosine": None,
                "argmax_agreement": (self.agree + sum(self.ref.steps[self.count:])) / self.ref.decisions,
                "top1": (self.correct + missing) / total if self.ref.classifier else None,
                "fp32_top1": self.ref.fp32_top1,
                "sequence_agreement": ((sum(self.readings) + sum(self.ref.rows[self.count:])) / sum(self.ref.rows)
                                       if self.ref.sequence else None),
                "stopped_after": self.count, "samples": total}

    def metrics(self) -> dict:
        ref = self.ref
        sqnr = min(_sqnr(ref.power[n] / ref.size[n], self.noise[n] / ref.size[n]) for n in ref.names)
        cosine = min(_cosine(self.dot[n], ref.power[n], self.test_power[n]) for n in ref.names)
        return {"sqnr_db": sqnr if np.isfinite(sqnr) else None, "cosine": cosine,
                "argmax_agreement": self.agree / ref.decisions,
                "top1": self.correct / len(ref.outputs) if ref.classifier else None,
                "fp32_top1": ref.fp32_top1,
                "sequence_agreement": float(np.mean(self.readings)) if ref.sequence and self.readings else None}


def _sqnr(power: float, noise_power: float) -> float:
    if noise_power == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(power, quantmath.TINY) / noise_power))


def _cosine(dot: float, ref_power: float, test_power: float) -> float:
    denom = np.sqrt(ref_power) * np.sqrt(test_power)
    return float(dot / denom) if denom > 0 else float(ref_power == test_power == 0.0)


def measure(reference: Reference, outputs: Iterable[dict], stop: Callable[[dict], bool] | None = None) -> dict:
    """Metrics of a candidate's `outputs` (one per reference sample, produced lazily), or, when
    `stop(optimistic)` says so after a chunk of STOP_CHUNK samples, the optimistic metrics so far."""
    running, total = _Running(reference), len(reference.outputs)
    for index, output in enumerate(outputs, 1):
        running.add(output)
        if stop is not None and index < total and index % STOP_CHUNK == 0:
            optimistic = running.optimistic()
            if stop(optimistic):
                return optimistic
    return running.metrics()


def int8_tflite(model, calibration, options: dict, directory: Path) -> tuple[Path, dict]:
    """Lower and write only the int8 .tflite (a build also writes the FP32 one); its path and io."""
    lowered = lower_model(model, calibration, options, quantized=True)
    path = directory / "model.tflite"
    path.write_bytes(writer.serialize(lowered.spec))
    return path, describe_io(lowered)


def tflite_evaluator(model, calibration, dataset, options: dict | None = None, max_samples: int | None = 300):
    """A callable(float_nodes, int16_nodes=(), stop=None) -> metrics dict (results.json accuracy
    keys) for the planner: `float_nodes` lowered in float, `int16_nodes` with int16 activations
    (16x8), the rest int8. `stop(optimistic)` -> True ends the run early (module docstring): the
    optimistic metrics come back, with `stopped_after` samples of `samples`."""
    options = dict(options or {})
    check_supported(model, str(options.get("target") or BACKEND))
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    feeds = [dataset.sample(i) for i in range(count)]
    labels = None if dataset.labels is None else np.asarray(dataset.labels[:count])
    session = graph.make_session(model)
    names = [o.name for o in model.graph.output]
    reference = Reference([dict(zip(names, session.run(names, feed))) for feed in feeds], labels)

    def evaluate(float_nodes, int16_nodes=(), stop: Callable[[dict], bool] | None = None) -> dict:
        with tempfile.TemporaryDirectory(prefix="edgepipe-plan-") as tmp:
            path, io = int8_tflite(model, calibration, {**options, "float_nodes": set(float_nodes),
                                                        "int16_nodes": set(int16_nodes)}, Path(tmp))
            interpreter = make_interpreter(path)
            return measure(reference, (run_tflite(path, io, feed, interpreter=interpreter) for feed in feeds), stop)

    return evaluate
