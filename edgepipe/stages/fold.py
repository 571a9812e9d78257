"""Fold stage: BatchNorm, constant affine chains, input normalization / whitening and temperature,
each self-checked.

Why a stage of our own (not onnxsim): these rewrites change what the model consumes (raw input)
and what it outputs (calibrated logits), so each is reported for the build summary and verified
by running the folded and unfolded graphs side by side in ONNX Runtime on a few inputs. A fold
that disagrees beyond tolerance is a bug in the fold, raised as `FoldCheckError`, never shipped.

Datasets passed here hold RAW-domain inputs, i.e. what the folded model consumes.
"""

from __future__ import annotations

import re

import numpy as np
import onnx

from edgepipe.errors import UserError
from edgepipe.fold import (
    expected_calibration_error,
    find_logits,
    fit_temperature,
    fold_batchnorm,
    fold_input_normalization,
    fold_temperature,
    softmax,
)
from edgepipe.fold.affine import fold_constant_affine
from edgepipe.fold.equalization import equalization_pairs, equalize_cross_layer
from edgepipe.fold.split_concat import split_before_concat
from edgepipe.fold.temperature import negative_log_likelihood
from edgepipe.graph import expose_tensors, graph_inputs, make_session, node_attributes, tensor_dtype, tensor_shape

DEFAULT_SETTINGS = {
    "batchnorm": True,
    "constant_affine": False,
    "cross_layer_equalization": False,
    "split_before_concat": True,
    "input_normalization": "none",
    "mean": None,
    "std": None,
    "temperature": "none",
    "eps": 1e-5,
    "input": None,
    "check_tolerance": 1e-3,
    "check_samples": 2,
}


def settings_that_apply(model: onnx.ModelProto, settings: dict) -> dict:
    """`settings` with the constant-affine fold and the equalization turned off where they would
    find nothing to do in `model` (graph-only checks, after the BatchNorm fold as run_fold does):
    targets whose defaults differ there (arm-cpu's fold_defaults) then share the fold stage, and
    every stage after it, for such models."""
    options = {**DEFAULT_SETTINGS, **settings}
    if not (options["constant_affine"] or options["cross_layer_equalization"]):
        return settings
    result = dict(settings)
    model = fold_batchnorm(model)[0] if options["batchnorm"] else model
    if options["constant_affine"]:
        folded, report = fold_constant_affine(model)
        if report["nodes_removed"]:
            model = folded
        else:
            result["constant_affine"] = False
    equalization = options["cross_layer_equalization"]
    if equalization in (True, "depthwise") and not equalization_pairs(model, equalization == "depthwise"):
        result["cross_layer_equalization"] = False
    return result


class FoldCheckError(RuntimeError):
    """A folded graph disagrees with the unfolded one: a bug in a fold, not a user mistake."""


def run_fold(model: onnx.ModelProto, settings: dict, calib_dataset=None, eval_dataset=None):
    """Apply the enabled folds in order BN -> constant affine chains -> equalization -> Split before
    Concat -> input normalization -> temperature; (model, report)."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise UserError(f"fold settings: unknown key(s) {sorted(unknown)}; known are {sorted(DEFAULT_SETTINGS)}")
    options = {**DEFAULT_SETTINGS, **settings}
    runs = _CheckRuns(model)
    feeds = _check_feeds(model, [calib_dataset, eval_dataset], int(options["check_samples"]), runs)
    _run_as_given(runs, feeds)
    report: dict = {}
    if options["batchnorm"]:
        folded, report["batchnorm"] = fold_batchnorm(model)
        report["batchnorm"]["max_rel_diff"], runs = _verify("batchnorm", runs, folded, feeds, options)
        model = folded
    if options["constant_affine"]:
        folded, report["constant_affine"] = fold_constant_affine(model)
        if report["constant_affine"]["nodes_removed"]:
            report["constant_affine"]["max_rel_diff"], runs = _verify("constant_affine", runs, folded, feeds,
                                                                      options)
            model = folded
    equalization = options["cross_layer_equalization"]
    if equalization not in (False, True, "depthwise"):
        raise UserError(f"fold.cross_layer_equalization must be true, false or depthwise, got {equalization!r}")
    if equalization:
        depthwise_only = equalization == "depthwise"
        ranges = _depthwise_input_ranges(model, calib_dataset)
        equalized, report["cross_layer_equalization"] = equalize_cross_layer(model, ranges, depthwise_only)
        report["cross_layer_equalization"]["max_rel_diff"], runs = _verify("cross_layer_equalization", runs,
                                                                           equalized, feeds, options)
        model = equalized
    if options["split_before_concat"]:
        moved, report["split_before_concat"] = split_before_concat(model)
        if report["split_before_concat"]["moved"]:
            report["split_before_concat"]["max_rel_diff"], runs = _verify("split_before_concat", runs, moved, feeds,
                                                                          options)
            model = moved
    mode = str(options["input_normalization"] or "none")
    if mode != "none":
        model, report["input_normalization"] = _fold_normalization(model, mode, options, feeds, calib_dataset)
    temperature = options["temperature"]
    if temperature not in (None, "none", "None"):
        model, report["temperature"] = _fold_temperature(model, temperature, options, feeds, eval_dataset)
    return model, report


def _fold_normalization(model, mode, options, feeds, calib_dataset):
    input_name = options["input"] or graph_inputs(model)[0].name
    explicit = mode == "mean_std" and options["mean"] is not None and options["std"] is not None
    if not explicit and calib_dataset is None:
        raise UserError(f"fold.input_normalization '{mode}' needs a calibration dataset (or, for mean_std, fold.mean and fold.std)")
    samples = None if explicit else (calib_dataset.sample(i)[input_name] for i in range(len(calib_dataset)))
    folded, report = fold_input_normalization(
        model, input_name, mode, mean=options["mean"], std=options["std"], samples=samples, eps=float(options["eps"])
    )
    matrix, mu = np.array(report["M"]), np.array(report["mu"])
    raw_feeds = [dict(feed) for feed in feeds]
    x = raw_feeds[0][input_name]  # the gaussian feed, moved to the raw mean and spread
    channel = (1, -1) + (1,) * (x.ndim - 2)
    raw_std = np.sqrt(np.maximum(np.diag(np.linalg.pinv(matrix.T @ matrix)), 1e-12))
    raw_feeds[0][input_name] = (x * raw_std.reshape(channel) + mu.reshape(channel)).astype(x.dtype)
    normalized_feeds = []
    for feed in raw_feeds:
        x = feed[input_name].astype(np.float64) - mu.reshape(1, -1, *([1] * (feed[input_name].ndim - 2)))
        normalized = np.einsum("jc,nc...->nj...", matrix, x).astype(feed[input_name].dtype)
        normalized_feeds.append({**feed, input_name: normalized})
    expected = _CheckRuns(model).outputs(normalized_feeds)
    report["max_rel_diff"] = _check("input_normalization", expected, _CheckRuns(folded).outputs(raw_feeds), options)
    return folded, report


def _fold_temperature(model, temperature, options, feeds, eval_dataset):
    logits_name = find_logits(model)
    labels = getattr(eval_dataset, "labels", None) if eval_dataset is not None else None
    logits = None
    if labels is not None:
        logits = _collect(model, [eval_dataset.sample(i) for i in range(len(eval_dataset))], logits_name)
        logits = logits.reshape(len(labels), -1)
    if str(temperature) == "auto":
        if logits is None:
            raise UserError("fold.temperature 'auto' needs an eval dataset with labels; give --eval data with labels or a number")
        value = fit_temperature(logits, labels)
    else:
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            raise UserError(f"fold.temperature '{temperature}': use 'none', 'auto' or a positive number") from None
    folded, report = fold_temperature(model, value)
    if logits is not None:
        labels = np.asarray(labels)
        report.update(
            fitted_on="eval" if str(temperature) == "auto" else None,
            ece_before=expected_calibration_error(softmax(logits), labels),
            ece_after=expected_calibration_error(softmax(logits / value), labels),
            nll_before=negative_log_likelihood(logits, labels, 1.0),
            nll_after=negative_log_likelihood(logits, labels, value),
        )
    reference = [[_collect(model, [feed], logits_name) / value] for feed in feeds]
    candidate = [[_collect(folded, [feed], logits_name)] for feed in feeds]
    report["max_rel_diff"] = _check("temperature", reference, candidate, options)
    return folded, report


EQUALIZATION_SAMPLES = 8  # calibration samples whose per-channel ranges a depthwise pair equalizes


def _depthwise_input_ranges(model, calib_dataset) -> dict[str, np.ndarray] | None:
    """{tensor: per-channel max |x|} of every tensor a depthwise equalization pair's second conv
    reads, on up to EQUALIZATION_SAMPLES evenly spaced calibration samples (None without data:
    the pairs fall back to weight ranges)."""
    from edgepipe.sampling import evenly_spaced

    names = sorted({second.input[0] for _, second in equalization_pairs(model)
                    if int(node_attributes(second).get("group", 1)) != 1})
    if not names or calib_dataset is None or len(calib_dataset) == 0:
        return None
    session = make_session(expose_tensors(model, names))
    ranges: dict[str, np.ndarray] = {}
    for i in evenly_spaced(len(calib_dataset), min(EQUALIZATION_SAMPLES, len(calib_dataset))):
        for name, value in zip(names, session.run(names, calib_dataset.sample(int(i)))):
            value = np.abs(np.asarray(value, np.float64))
            per_channel = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1).max(axis=1)
            ranges[name] = np.maximum(ranges.get(name, 0.0), per_channel)
    return ranges


def _check_feeds(model, datasets, count: int, runs: "_CheckRuns | None" = None) -> list[dict]:
    """A gaussian and a ramp feed (dynamic dims set to 1) where the model accepts them, plus up to
    `count` dataset samples. Invented values are not valid for every input (a Resize `scales`, a
    Reshape `shape`, an integer divisor): a synthetic feed the unfolded model rejects is dropped.
    `runs` (the unfolded model's `_CheckRuns`) keeps the outputs of the synthetic feeds it ran."""
    random_feed, ramp_feed = {}, {}
    rng = np.random.default_rng(0)
    for value in graph_inputs(model):
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in tensor_shape(value)]
        dtype = tensor_dtype(value)
        if dtype.kind != "f":
            random_feed[value.name] = ramp_feed[value.name] = np.zeros(shape, dtype)
            continue
        random_feed[value.name] = rng.standard_normal(shape).astype(dtype)
        ramp_feed[value.name] = np.linspace(-2, 2, int(np.prod(shape))).reshape(shape).astype(dtype)
    runs = runs or _CheckRuns(model)
    feeds = []
    for feed in (random_feed, ramp_feed):
        if runs.accepts(feed, len(feeds)):
            feeds.append(feed)
    for dataset in datasets:
        if dataset is not None:
            feeds += [dataset.sample(i) for i in range(min(count, len(dataset)))]
    return feeds


class _CheckRuns:
    """One model's outputs on the check feeds, each feed run once.

    Why: the folds are checked in a chain (the unfolded model against the BatchNorm fold, that
    fold against the next, ...) on the same feeds, and the synthetic feeds are first run to see
    whether the model accepts them. The unfolded model's session serves both, and a fold's
    outputs, once verified, are the next fold's reference: the same session kind, model and
    feeds, hence the same values as running them again."""

    def __init__(self, model, known: dict[int, list] | None = None):
        self.model = model
        self.known = dict(known or {})  # feed position -> outputs
        self._session = None

    def session(self):
        if self._session is None:
            self._session = make_session(self.model)
        return self._session

    def accepts(self, feed: dict, position: int) -> bool:
        """Whether the model runs `feed` (kept as the outputs of feed `position` when it does)."""
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a rejected synthetic feed is expected, not an error to print
        try:
            self.known[position] = self.session().run(None, feed, quiet)
        except Exception:
            return False
        return True

    def outputs(self, feeds: list[dict]) -> list[list]:
        """Outputs for each feed in `feeds` (the check feeds, by position), run where not known."""
        for position, feed in enumerate(feeds):
            if position not in self.known:
                self.known[position] = self.session().run(None, feed)
        self._session = None  # every check feed is known now: the session is not needed again
        return [self.known[position] for position in range(len(feeds))]


_RUNTIME_FAILURE = re.compile(r"running (\S+) node\. Name:'(.*?)' Status Message: (.*)", re.S)


def _run_as_given(runs: "_CheckRuns", feeds: list[dict]) -> None:
    """Run the model as it came to this stage (before any fold) on the check feeds. A node ONNX
    Runtime cannot run on real data (a Conv whose group does not match its weights, a Reshape to a
    shape of another size, a Gather index past its table, a negative Split size) is the model's
    own fault, named in one line; the same failure after a fold is edgepipe's (an internal error)."""
    try:
        runs.outputs(feeds)
    except Exception as exc:
        found = _RUNTIME_FAILURE.search(str(exc))
        if not type(exc).__module__.startswith("onnxruntime") or found is None or "Failed to allocate" in str(exc):
            raise
        op_type, name, message = found.groups()
        message = re.sub(r"^/\S+:\d+ \S.*?\) ", "", " ".join(message.split()))[:300]  # ORT's source location
        raise UserError(f"node '{name}' ({op_type}) cannot run in ONNX Runtime on the calibration data: "
                        f"{message}; the model is broken there: check that node's attributes and weights, "
                        "and the input shape and data it gets") from exc


def _collect(model, feeds: list[dict], name: str) -> np.ndarray:
    session = make_session(expose_tensors(model, [name]))
    index = [o.name for o in session.get_outputs()].index(name)
    return np.concatenate([np.asarray(session.run(None, feed)[index]) for feed in feeds])


def _verify(fold: str, reference: _CheckRuns, candidate, feeds, options) -> tuple[float, _CheckRuns]:
    """(largest relative difference, the candidate's runs): `candidate` (a folded model) against
    `reference` on `feeds`; the candidate's runs are the next fold's reference."""
    expected = reference.outputs(feeds)
    runs = _CheckRuns(candidate)
    return _check(fold, expected, runs.outputs(feeds), options), runs


def _check(fold: str, expected: list[list], got: list[list], options) -> float:
    """Largest |difference| / output scale over feeds and outputs; FoldCheckError above tolerance."""
    worst = 0.0
    for expected_outputs, got_outputs in zip(expected, got):
        for want, have in zip(expected_outputs, got_outputs):
            if np.asarray(want).dtype.kind in "OSU":  # string labels (ai.onnx.ml LabelEncoder): equal or not
                worst = worst if np.array_equal(want, have) else float("inf")
                continue
            want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
            if want.size:
                scale = max(1.0, float(np.max(np.abs(want))))
                with np.errstate(invalid="ignore"):  # inf - inf where both are inf: not a warning to print
                    worst = max(worst, float(np.max(np.abs(want - have))) / scale)
    if not worst <= float(options["check_tolerance"]):
        raise FoldCheckError(f"{fold} fold changed the model output by {worst:.3g} (relative), above {options['check_tolerance']}")
    return worst
