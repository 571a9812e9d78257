"""The build's checks after calibration: bias correction (a stage) and the output effect of
unstable thresholds, which runs while the backend and the bundle are written.

Why here and not in build.py: both checks simulate the target's int8 model several times and
share those simulations (`Target.sharing_simulations`); the output effect reads only the model
and the final calibration, so it runs on a thread of its own during the bundle stages, and the
bundle is committed (renamed into place) only once it has finished: its error still writes
nothing, and is reported as its own, not as the bundle stage's.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def run_checks(pipeline, model, calibration, dataset, target, backend_settings: dict, bias_correction) -> Callable:
    """Run the bias-correction stage (`calibration.bias_correction`: "auto" estimates and keeps the
    corrections only where the held-out outputs improve; true: always); returns the output-effect
    check, prepared (its samples read) and ready to run: a function returning (effect, warning)."""
    with target.sharing_simulations():  # the checks simulate some states more than once
        if bias_correction:
            from edgepipe.calibrate import bias_correction as bias

            checked = bias_correction == "auto"
            pipeline.run("bias_correction",
                         lambda: (bias.checked_bias_corrections(model, calibration, dataset, target, backend_settings)
                                  if checked else bias.estimate_bias_corrections(model, calibration, dataset,
                                                                                 target.qdq_model)),
                         describe=lambda _: (f"calibration.json ({len(calibration.bias_corrections)} corrected biases)",
                                             0, ""),
                         note=bias.summary if checked else None)
        return calibration_stability(model, calibration, dataset, target)


def calibration_stability(model, calibration, dataset, target) -> Callable:
    """A function returning (output effect, warning): unstable thresholds are reported only when
    they change the target's int8 output measurably (edgepipe/calibrate/stability.py:
    output_effect). The samples are read here; the function may run on another thread. Inside
    `target.sharing_simulations()` the chosen state's Q/DQ model and session are the bias
    check's; the rounds' models are derived from that model (`Target.qdq_variants`)."""
    from edgepipe.calibrate import stability

    unstable = bool(stability.unstable_tensors(calibration))
    chosen = target.int8_session(model, calibration) if unstable else None
    measure = stability.prepare_output_effect(model, calibration, dataset, lambda m, c: target.qdq_model(m, c)[0],
                                              chosen_session=lambda _: chosen,
                                              variants=target.qdq_variants(model, calibration) if unstable else None)

    def effect_and_warning():
        effect = measure()
        return effect, stability.effect_warning(effect)
    return effect_and_warning


class CheckFailed(Exception):
    """Carries an error of the output-effect check out of the bundle stage (whose error it is not)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class InBackground:
    """`measure()` on a thread of its own; `before_commit()` waits for it (the bundle's last step)."""

    def __init__(self, measure: Callable):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="edgepipe-effect")
        self.future = self.pool.submit(measure)

    def before_commit(self) -> None:
        try:
            self.future.result()
        except Exception as exc:
            raise CheckFailed(exc) from exc

    def result(self):
        return self.future.result()

    def __enter__(self) -> "InBackground":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)  # an error elsewhere still waits for the thread to end


def warn_stability(effect_and_warning: tuple, warnings: list[str]) -> None:
    if effect_and_warning[1]:
        warnings.append(f"calibration: {effect_and_warning[1]}")
