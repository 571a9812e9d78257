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
    check: (output effect, warning). Unstable thresholds are reported only when they change the
    target's int8 output measurably (edgepipe/calibrate/stability.py: output_effect); its chosen
    state's session is the bias check's, and the rounds' models are derived from that state's
    Q/DQ model (`Target.qdq_variants`)."""
    from edgepipe.calibrate import stability
    from edgepipe.calibrate.collector import sample_indices
    from edgepipe.targets import Target

    # the bias check's held-out int8 outputs of the state it keeps, when it ran them on the
    # simulation the output-effect check measures (`Target.int8_outputs`: `int8_session`)
    held_out = {} if (type(target).int8_outputs is Target.int8_outputs
                      and type(target).int8_session is Target.int8_session) else None
    with target.sharing_simulations():  # the checks simulate some states more than once
        if bias_correction:
            from edgepipe.calibrate import bias_correction as bias

            checked = bias_correction == "auto"
            pipeline.run("bias_correction",
                         lambda: (bias.checked_bias_corrections(model, calibration, dataset, target, backend_settings,
                                                                held_out)
                                  if checked else bias.estimate_bias_corrections(model, calibration, dataset,
                                                                                 target.qdq_model,
                                                                                 weight_folds=target.weight_folds())),
                         describe=lambda _: (f"calibration.json ({len(calibration.bias_corrections)} corrected biases)",
                                             0, ""),
                         note=bias.summary if checked else None)
        # the kept state's Q/DQ model and session, as the bias check left them; the other states are
        # dropped with the block, before the output-effect check builds its own (peak memory)
        unstable = bool(stability.unstable_tensors(calibration))
        if held_out:  # only the samples the output-effect check measures
            wanted = set(sample_indices(len(dataset), stability.EFFECT_SAMPLES)) if unstable else set()
            held_out = {i: values for i, values in held_out.items() if i in wanted}
        chosen = target.int8_session(model, calibration) if unstable else None
        variants = target.qdq_variants(model, calibration) if unstable else None
        folds = target.weight_folds()  # the weights the checks folded: the same in every round's model
    effect = stability.output_effect(model, calibration, dataset, lambda m, c: target.qdq_model(m, c)[0],
                                     chosen_session=lambda _: chosen, variants=variants, chosen_outputs=held_out,
                                     weight_folds=folds)
    return effect, stability.effect_warning(effect)
