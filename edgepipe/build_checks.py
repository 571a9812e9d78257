"""The build's checks after calibration: bias correction (a stage) and the output effect of
unstable thresholds.

Why together: both simulate the target's int8 model several times, often in the same states
(the bias check's kept state is the output-effect check's chosen one), and share those
simulations inside one `Target.sharing_simulations()` block.
"""

from __future__ import annotations


def run_checks(pipeline, model, calibration, dataset, target, backend_settings: dict,
               bias_correction) -> tuple[dict | None, str | None]:
    """Run the bias-correction stage (`calibration.bias_correction`: "auto" estimates and keeps the
    corrections only where the held-out outputs improve; true: always), then the output-effect
    check: (output effect, warning)."""
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


def calibration_stability(model, calibration, dataset, target) -> tuple[dict | None, str | None]:
    """(output effect, warning): unstable thresholds are reported only when they change the
    target's int8 output measurably (edgepipe/calibrate/stability.py: output_effect). Inside
    `target.sharing_simulations()` the chosen state's Q/DQ model and session are the bias
    check's; the rounds' models are derived from that model (`Target.qdq_variants`)."""
    from edgepipe.calibrate import stability

    unstable = bool(stability.unstable_tensors(calibration))
    effect = stability.output_effect(model, calibration, dataset, lambda m, c: target.qdq_model(m, c)[0],
                                     chosen_session=lambda c: target.int8_session(model, c),
                                     variants=target.qdq_variants(model, calibration) if unstable else None)
    return effect, stability.effect_warning(effect)
