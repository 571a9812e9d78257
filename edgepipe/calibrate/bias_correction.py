"""Empirical bias correction: fold the mean error that int8 adds to each weighted layer's output
back into that layer's bias.

Why: rounding weights and clipping activations does not only add noise, it shifts the mean of a
layer's output per channel (E[W_q x_q] != E[W x]), and a shifted mean is carried by every later
layer (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
2019; Finkelstein et al., 2019, empirical variant). On calibration data we run the float model
and each layer's int8 version (the target's own Q/DQ simulation, `Target.qdq_model`, of that
one node) on the same float input, take per output channel the mean of float minus int8 output
of every Conv / Gemm / MatMul(+Add bias), and add it to the bias.

The corrections live in `CalibrationResult.bias_corrections` (`{node name: [per channel]}`), so
calibration.json records them and every int8 consumer applies the same ones through
`apply_bias_corrections` (TFLite int8 lowering, the Q/DQ model): the FP32 reference, the float
.tflite and reference.onnx keep the original biases.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph

CORRECTED_OPS = ("Conv", "Gemm", "MatMul")
DEFAULT_SAMPLES = 32


def correction_sites(model: onnx.ModelProto) -> dict[str, tuple[str, str | None, int]]:
    """{node name: (tensor the bias shifts, bias initializer or None, channel axis)} for every
    weighted node with a constant weight whose bias can be shifted: a Conv (bias added when
    missing), a Gemm with a 1-D or absent C, a MatMul followed by an Add of a constant vector
    (the shifted tensor is then the Add's output and the bias that constant)."""
    consumers = graph.consumers(model)
    sites = {}
    for node in model.graph.node:
        if not node.name or node.op_type not in CORRECTED_OPS or len(node.input) < 2:
            continue
        weight = graph.constant_value(model, node.input[1])
        if weight is None or weight.dtype != np.float32:  # a float64 layer stays float (jetson's Q/DQ)
            continue
        if node.op_type == "Conv":
            sites[node.name] = (node.output[0], node.input[2] if len(node.input) > 2 and node.input[2] else None, 1)
        elif node.op_type == "Gemm":
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias is None or np.ndim(graph.constant_value(model, bias)) == 1:
                sites[node.name] = (node.output[0], bias, -1)
        else:
            users = consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type != "Add":
                continue
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            value = graph.constant_value(model, other)
            if value is not None and value.ndim == 1 and value.shape[0] == weight.shape[-1]:
                sites[node.name] = (add.output[0], other, -1)
    return sites


def apply_bias_corrections(model: onnx.ModelProto, corrections: dict[str, list[float]] | None,
                           skip=frozenset()) -> onnx.ModelProto:
    """Copy of `model` with each corrected node's bias shifted (a new initializer, so a bias
    shared with an uncorrected node is left alone); `model` itself when there is nothing to do.
    Nodes in `skip` (run float or 16x8, not on the int8 grids the shift was measured for) keep
    their bias."""
    corrections = {k: v for k, v in (corrections or {}).items() if k not in skip}
    if not corrections:
        return model
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    sites = correction_sites(corrected)
    nodes = {n.name: n for n in corrected.graph.node}
    consumers = graph.consumers(corrected)
    taken = graph.taken_names(corrected)  # once, not per correction
    biases: dict[str, onnx.TensorProto] = {}
    for tensor in corrected.graph.initializer:
        biases.setdefault(tensor.name, tensor)  # the first of a name, as graph.constant_value
    for name, delta in corrections.items():
        if name not in sites:
            continue
        _, bias_name, _ = sites[name]
        node = nodes[name]
        delta = np.asarray(delta, np.float32)
        if not bias_name:
            base = np.zeros_like(delta)
        else:  # the original bias (the corrected copies are new initializers)
            base = (onnx.numpy_helper.to_array(biases[bias_name]) if bias_name in biases
                    else graph.constant_value(corrected, bias_name))
        new = graph.add_initializer(corrected, f"{name}_bias_corrected", (base + delta).astype(np.float32), taken)
        if node.op_type == "MatMul":
            add = consumers[node.output[0]][0]
            add.input[list(add.input).index(bias_name)] = new
        elif len(node.input) > 2:
            node.input[2] = new
        else:
            node.input.append(new)
    graph.remove_unused_initializers(corrected)
    return corrected


def _channel_means(values: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1]).mean(axis=0)


def _mean_outputs(model: onnx.ModelProto, feeds: list[dict], tensors: dict[str, tuple[str, int]],
                  weight_folds: dict | None = None) -> dict:
    """{key: per-channel mean over `feeds`} of each (tensor, channel axis) in `tensors`. Weights on
    their int8 grid are quantized once, not on every run (`graph.fold_constant_weights`, with the
    caller's `weight_folds` cache when given); each run's outputs are reduced to channel means in
    its worker, then summed in feed order."""
    from edgepipe.session_runs import run_feeds

    exposed = graph.expose_tensors(graph.fold_constant_weights(model, weight_folds),
                                   sorted({t for t, _ in tensors.values()}))
    session = graph.make_session(exposed)
    names = [o.name for o in session.get_outputs()]

    def channel_means(outputs: list) -> dict:
        values = dict(zip(names, outputs))
        return {key: _channel_means(values[tensor], axis) for key, (tensor, axis) in tensors.items()}

    totals: dict[str, np.ndarray] = {}
    for means in run_feeds(session, feeds, reduce=channel_means):
        for key in tensors:
            totals[key] = totals.get(key, 0.0) + means[key]
    return {key: total / len(feeds) for key, total in totals.items()}


def local_error_model(model: onnx.ModelProto, simulated: onnx.ModelProto, sites: dict) -> tuple[onnx.ModelProto, dict]:
    """The float model plus, for every site, its int8 version (the simulation's node reading its
    Q/DQ inputs) fed from the *float* activations: (model, {site: (int8 output, channel axis)}).
    The difference of the two outputs is the error the site adds itself; errors coming from
    upstream are left to the upstream sites' own corrections.

    Built from the simulation (its opset, its Q/DQ nodes): every input the simulation routed
    through a DequantizeLinear gets its original tensor back, so the graph computes float and the
    Q/DQ nodes now quantize float activations; each site's simulated node is then appended under
    a new output name."""
    combined = onnx.ModelProto()
    combined.CopyFrom(simulated)
    original = {n.name: n for n in model.graph.node if n.name}
    suffix = "@bias_correction"
    inserted = {n.output[0] for n in simulated.graph.node if n.op_type == "DequantizeLinear" and n.name not in original}
    clones = []
    for node in combined.graph.node:
        if node.name in sites:
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = node.name + suffix
            clone.output[:] = [node.output[0] + suffix]
            clones.append(clone)
        if node.name in original:  # inputs the simulation rerouted through its Q/DQ go back to float
            for position, tensor in enumerate(node.input):
                if tensor in inserted and position < len(original[node.name].input):
                    node.input[position] = original[node.name].input[position]
    combined.graph.node.extend(clones)
    have = {t.name for t in combined.graph.initializer} | {i.name for i in combined.graph.input}
    have |= {o for n in combined.graph.node for o in n.output}
    for tensor in sorted({t for n in combined.graph.node for t in n.input if t and t not in have}):
        value = graph.constant_value(model, tensor)  # an original weight the simulation replaced
        if value is not None:
            combined.graph.initializer.append(onnx.numpy_helper.from_array(value, tensor))
    return combined, {clone.name[: -len(suffix)]: (clone.output[0], sites[clone.name[: -len(suffix)]][2])
                      for clone in clones}


def estimate_bias_corrections(model: onnx.ModelProto, calibration, dataset, qdq_model,
                              samples: int = DEFAULT_SAMPLES, positions=None, weight_folds: dict | None = None) -> dict:
    """Per-channel corrections ({node: [delta]}): the mean, over up to `samples` evenly spaced
    samples of `dataset` (or over the samples at `positions`), of each site's float output minus its
    int8 version fed the same float
    input (the target's simulation, `qdq_model(model, calibration)`, provides the Q/DQ of every
    site). One pass over the data. Local on purpose: correcting each layer's own error also
    fixes, to first order, the mean every later layer inherits, while the whole-graph error of a
    simulation holds what the simulation does not share with the target's real kernels
    (requantization at elementwise ops) and corrected all at once counts an upstream shift twice.
    The result is also stored in `calibration.bias_corrections`. `weight_folds`: the weight-folding
    cache the caller shares with its other simulations (`Target.weight_folds`), if any."""
    from edgepipe.sampling import evenly_spaced

    sites = correction_sites(model)
    if not sites or len(dataset) == 0:
        return {}
    if positions is None:
        positions = evenly_spaced(len(dataset), min(samples, len(dataset)))
    feeds = [dataset.sample(int(i)) for i in positions]
    calibration.bias_corrections = {}
    simulated, _ = qdq_model(model, calibration)
    combined, local = local_error_model(model, simulated, sites)
    wanted = dict(local)
    outputs = {n.name: n.output[0] for n in model.graph.node}
    wanted.update({f"{name}@float": (outputs[name], sites[name][2]) for name in local})
    means = _mean_outputs(combined, feeds, wanted, weight_folds)
    corrections = {name: [float(x) for x in means[f"{name}@float"] - means[name]] for name in sorted(local)}
    calibration.bias_corrections = corrections
    return corrections


# --- the held-out check (calibration.bias_correction: auto) ---------------------------------

# fewer calibration samples: too few held out to judge by. A check on 8 held-out images kept a
# correction (+5.4 dB there) that cost 11 dB on 24 unseen ones (tests/realmodels orientation classifier)
MIN_SAMPLES_TO_CHECK = 32
MAX_HELD_OUT = 32
TOLERANCE_DB = 0.1  # held-out SQNR differences below this are sample noise


def split_for_check(count: int, samples: int = DEFAULT_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(positions the corrections are estimated on, held-out positions they are judged on):
    disjoint, deterministic; every other sample is held out (at most MAX_HELD_OUT, spread evenly),
    the rest estimate (at most `samples`, spread evenly). Nothing is held out below
    MIN_SAMPLES_TO_CHECK samples."""
    from edgepipe.sampling import evenly_spaced

    if count < MIN_SAMPLES_TO_CHECK:
        return evenly_spaced(count, min(samples, count)), np.zeros(0, dtype=np.int64)
    odd = np.arange(1, count, 2)
    held = odd[evenly_spaced(len(odd), min(MAX_HELD_OUT, len(odd)))]
    rest = np.setdiff1d(np.arange(count), held)
    return rest[evenly_spaced(len(rest), min(samples, len(rest)))], held


def _output_sqnrs(references: list[dict], states: list[list[dict]], names: list[str]) -> list[list[float | None]]:
    """Per state (a list of per-feed outputs), each output's SQNR against `references` over all
    feeds. Each output's reference is concatenated, widened and squared once for every state."""
    from edgepipe import quantmath

    per_state: list[list[float | None]] = [[] for _ in states]
    for name in names:
        reference = np.concatenate([np.ravel(r[name]) for r in references]).astype(np.float64)
        power = quantmath.signal_power(reference)
        for values, outputs in zip(per_state, states):
            sqnr = quantmath.sqnr_db(reference, np.concatenate([np.ravel(o[name]) for o in outputs]), power)
            values.append(float(sqnr) if np.isfinite(sqnr) else None)
    return per_state


def judge_corrections(without: list[float | None], corrected: list[float | None]) -> tuple[bool, str]:
    """(keep, why) from each output's held-out SQNR without and with the corrections: kept when no
    output loses more than TOLERANCE_DB and the outputs gain at least TOLERANCE_DB on average (a
    smaller gain is within what the held-out samples can tell apart)."""
    gains = [c - w for w, c in zip(without, corrected) if w is not None and c is not None]
    if not gains:
        return False, "no output with a finite held-out SQNR to judge by"
    worst = int(np.argmin(gains))
    if gains[worst] < -TOLERANCE_DB:
        return False, f"an output loses {-gains[worst]:.2f} dB held-out SQNR"
    if float(np.mean(gains)) < TOLERANCE_DB:
        return False, f"no measurable held-out gain (mean {float(np.mean(gains)):+.2f} dB)"
    return True, f"held-out SQNR {float(np.mean(gains)):+.2f} dB on average, no output worse"


def checked_bias_corrections(model: onnx.ModelProto, calibration, dataset, target, settings: dict,
                             kept_outputs: dict | None = None) -> dict:
    """calibration.bias_correction: auto. Estimate the corrections on part of the calibration set,
    run the target's int8 model (`target.int8_outputs`: the .tflite in LiteRT, the Q/DQ ONNX for
    TensorRT targets) on the held-out rest with and without them, and keep them only when the
    outputs get closer to FP32 there (`judge_corrections`). Why: a mean shift that helps the
    typical sample can move a layer that feeds a saturating output (a detector's sigmoid class
    map) the wrong way where it matters, and only the outputs say so. Sets
    `calibration.bias_corrections` ({} when dropped) and `calibration.bias_correction` (the
    numbers); returns the latter. `kept_outputs`, when given, receives the kept state's int8
    outputs on the held-out samples ({sample index: [value per graph output]}): the output-effect
    check measures that state on some of the same samples (build_checks.run_checks)."""
    from dataclasses import replace

    estimate, held = split_for_check(len(dataset))
    corrections = estimate_bias_corrections(model, calibration, dataset, target.qdq_model, positions=estimate,
                                            weight_folds=_weight_folds(target))
    report = {"mode": "auto", "corrected_layers": len(corrections), "estimated_on": len(estimate),
              "held_out": len(held)}
    if not corrections or len(held) == 0:
        calibration.bias_corrections = {}
        report.update(kept=False, reason="no layer to correct" if not corrections else
                      f"fewer than {MIN_SAMPLES_TO_CHECK} calibration samples: too few to check on, left off")
        calibration.bias_correction = report
        return report
    feeds = [dataset.sample(int(i)) for i in held]
    names = [o.name for o in model.graph.output]
    references = fp32_outputs(model, feeds, [int(i) for i in held], getattr(calibration, "reference_outputs", None))
    # uncorrected first: the corrected state, run last, is the one a build keeps most often (and
    # the output-effect check's chosen state then), so its simulation is the one still shared
    plain, _ = target.int8_outputs(model, replace(calibration, bias_corrections={}), feeds, settings)
    outputs, judge = target.int8_outputs(model, calibration, feeds, settings)
    with_sqnr, without_sqnr = _output_sqnrs(references, [outputs, plain], names)
    keep, reason = judge_corrections(without_sqnr, with_sqnr)
    if not keep:
        calibration.bias_corrections = {}
    if kept_outputs is not None:
        kept_state = outputs if keep else plain
        kept_outputs.update({int(i): [state[name] for name in names] for i, state in zip(held, kept_state)})
    report.update(kept=keep, reason=reason, judged_by=judge, outputs=names,
                  held_out_sqnr_db={"without": without_sqnr, "with": with_sqnr})
    calibration.bias_correction = report
    return report


def _weight_folds(target) -> dict | None:
    """The target's shared weight-folding cache (`Target.weight_folds`); None for a target object
    without one."""
    folds = getattr(target, "weight_folds", None)
    return folds() if callable(folds) else None


def fp32_outputs(model: onnx.ModelProto, feeds: list[dict], positions: list[int], kept: dict | None) -> list[dict]:
    """{output name: FP32 value} per feed: calibration's own runs of those samples where it kept
    them (`calibration.reference_outputs`, by position in the calibration set: the same values),
    the FP32 model for the rest."""
    from edgepipe.session_runs import run_feeds

    names = [o.name for o in model.graph.output]
    kept = kept or {}
    missing = [k for k, position in enumerate(positions) if position not in kept]
    ran = iter(run_feeds(graph.make_session(model), [feeds[k] for k in missing], names) if missing else [])
    return [dict(zip(names, kept[position] if position in kept else next(ran))) for position in positions]


def summary(report: dict) -> str:
    """One line for the build's stage table."""
    if not report.get("kept"):
        return f"dropped: {report.get('reason', '')}"
    return f"kept ({report.get('corrected_layers', 0)} layers): {report.get('reason', '')}"
