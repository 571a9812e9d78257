"""Stream activation statistics of an FP32 ONNX model over a calibration set (collect phase).

Why streaming: ONNX Runtime's `collect_data` keeps every exposed activation of every sample and
histograms at the end (tens of GB on detectors). Here each batch's activations are folded into
fixed-size histograms (histogram.py) and dropped, so peak memory is one batch's activations plus
at most PENDING_BYTES of buffered small activations plus `tensors x rounds x 2 x num_bins`
counters, whatever the number of samples.

Which tensors: graph inputs and float outputs of every node that a backend may quantize; integer
and shape tensors and anything computed only from constants (Constant nodes, shape arithmetic on
initializers) are skipped.

Infinities: an attention mask built with masked_fill(-inf) or `(1 - mask) * finfo.min` legitimately
carries -inf (or a sentinel of magnitude >= MASK_SENTINEL) into the scores it is added to. A tensor
that can only get such a value from a constant of the graph (`unbounded_candidates`: downstream of
a constant holding one) and does carry one on calibration data is `unbounded`: it gets no range,
so every target keeps it float (TensorRT places no Q/DQ there, as its own placement would not;
TFLite lowers the nodes that read or write it as float islands). NaN anywhere, and infinities in
a model input or in a tensor no such constant reaches (an overflow), stay errors naming the sample.

Small activations are buffered across batches (`_Pending`, at most PENDING_BYTES) and binned
together, which is exact and removes most per-update overhead.

Memory vs passes: exposing every tensor makes ONNX Runtime return all of one batch's activations
at once. When their estimated size exceeds `max_exposed_mb`, tensors are split into chunks and
the model runs once per chunk (time x chunks, memory / chunks). Tensors whose size shape
inference cannot tell count as the largest known one.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edgepipe import graph
from edgepipe.calibrate import kernels
from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.policy import TensorContext
from edgepipe.errors import UserError
from edgepipe.modelcheck import nonfinite_cause

# |x| at or above this is a mask sentinel, not an activation: torch.finfo(float32).min (-3.4e38,
# Hugging Face), masked_fill(-1e9) (the Annotated Transformer); BERT's older -10000.0 is below it
MASK_SENTINEL = 1e8
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def shape_infos(model: onnx.ModelProto) -> dict:
    """`graph.value_infos` of the shape-inferred model: computed once per calibration (an 11 MB
    model's shape inference is tens of milliseconds) and passed to the functions below."""
    return graph.value_infos(graph.infer_shapes(model))


def calibratable_tensors(model: onnx.ModelProto, infos: dict | None = None) -> dict[str, TensorContext]:
    """Float activation tensors (graph inputs first, then node outputs in graph order) with context."""
    infos = shape_infos(model) if infos is None else infos
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # graph order is topological in valid ONNX
        if node.op_type == "Constant" or (node.input and all(not i or i in constant for i in node.input)):
            constant.update(o for o in node.output if o)
    consumer_ops = {name: tuple(n.op_type for n in nodes) for name, nodes in graph.consumers(model).items()}
    outputs = {o.name for o in model.graph.output}

    def is_float(name: str) -> bool:
        info = infos.get(name)
        elem = info.type.tensor_type.elem_type if info is not None else 0
        return elem == 0 or elem in FLOAT_TYPES  # unknown type: decided on the first batch

    result: dict[str, TensorContext] = {}
    for value in graph.graph_inputs(model):
        if is_float(value.name):
            result[value.name] = TensorContext(None, consumer_ops.get(value.name, ()), value.name in outputs)
    for node in model.graph.node:
        for name in node.output:
            if name and name not in constant and name not in result and is_float(name):
                result[name] = TensorContext(node.op_type, consumer_ops.get(name, ()), name in outputs)
    return result


def unbounded_candidates(model: onnx.ModelProto) -> set[str]:
    """Tensors downstream of a constant holding +-inf or a mask sentinel (initializers, Constant
    nodes, ConstantOfShape values): the only ones allowed to carry them during calibration."""
    def sentinel(array) -> bool:
        array = np.asarray(array)
        return array.dtype.kind == "f" and bool(np.any(~(np.abs(array) < MASK_SENTINEL)))

    sources = {t.name for t in model.graph.initializer if sentinel(numpy_helper.to_array(t))}
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):  # a Constant's value may be value_float(s) too
            values = [numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(a.f if a.name == "value_float"
                                                                                      else list(a.floats), np.float32)
                      for a in node.attribute if a.name in ("value", "value_float", "value_floats")]
            if values and sentinel(values[0]):
                sources.update(o for o in node.output if o)
    reached: set[str] = set()
    for node in model.graph.node:  # topological order
        if any(name in sources or name in reached for name in node.input):
            reached.update(o for o in node.output if o)
    return reached


def sample_indices(dataset_size: int, max_samples: int | None) -> list[int]:
    """All samples, or `max_samples` spread evenly over the set (image folders are class-sorted)."""
    if not max_samples or max_samples >= dataset_size:
        return list(range(dataset_size))
    return sorted({int(i) for i in np.linspace(0, dataset_size - 1, max_samples).round()})


def round_of(position: int, total: int, rounds: int) -> int:
    """Contiguous split of positions 0..total-1 into `rounds` chunks."""
    return min(position * rounds // max(total, 1), rounds - 1)


def static_batch_size(model: onnx.ModelProto, requested: int) -> int:
    """1 when an input has a static shape: a fixed batch of 1, or a leading dim that is part of
    every sample ([3, 4, 5]); neither takes several samples at once."""
    for value in graph.graph_inputs(model):
        if graph.is_static(graph.declared_shape(value)):
            return 1
    return max(int(requested), 1)


def batches(dataset, indices: list[int], rounds: int, batch_size: int) -> Iterator[tuple[int, list[int], dict]]:
    """(round, sample indices, feed) batches that never cross a round boundary."""
    current: list[int] = []
    current_round = 0
    for position, index in enumerate(indices):
        r = round_of(position, len(indices), rounds)
        if current and (r != current_round or len(current) == batch_size):
            yield current_round, current, _stack(dataset, current)
            current = []
        current_round = r
        current.append(index)
    if current:
        yield current_round, current, _stack(dataset, current)


def _stack(dataset, indices: list[int]) -> dict:
    samples = [dataset.sample(i) for i in indices]
    if len(samples) == 1:
        return dict(samples[0])
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}


def tensor_chunks(model: onnx.ModelProto, names: list[str], batch_size: int, max_exposed_mb: float,
                  infos: dict | None = None) -> list[list[str]]:
    """Split `names` so each chunk's estimated activations per batch stay under the budget."""
    infos = shape_infos(model) if infos is None else infos
    sizes = {}
    for name in names:
        dims = graph.tensor_shape(infos[name]) if name in infos else []
        if dims and all(isinstance(d, int) for d in dims[1:]):
            sizes[name] = int(np.prod([d for d in dims[1:]], dtype=np.int64)) * 4 * batch_size
    fallback = max(sizes.values(), default=0)
    budget = max_exposed_mb * 2**20
    chunks: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        size = sizes.get(name, fallback)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0.0
        chunks[-1].append(name)
        used += size
    return chunks


def _extremes(arrays: dict, names, workers: "Workers", allowed: set[str] = frozenset(),
              unbounded: set[str] | None = None) -> tuple[dict[str, tuple[float, float, int]], str | None]:
    """(min, max, number of negatives) of every float array in `names` order, and the first with a
    NaN or Inf (or None). A tensor of `allowed` holding +-inf or a mask sentinel (no NaN) is added
    to `unbounded` instead (no extremes: it is not binned).

    One reduction pair per tensor serves both the NaN/Inf check (NaN propagates through min/max)
    and the histogram update, which would otherwise reduce the same data again; the negatives
    (which the histogram needs for its zero bins) are counted in the same task, while the array
    is still in cache, not when it is binned batches later; None where the histogram's compiled
    loop counts them itself while it bins (kernels.py), which costs it nothing extra.
    """
    floats = [name for name in names if (value := arrays.get(name)) is not None and value.dtype.kind == "f"
              and value.size]
    signs_counted = kernels.compiled()

    def reduce(name: str) -> tuple[float, float, int | None]:
        value = arrays[name]
        low, high = float(np.minimum.reduce(value, axis=None)), float(np.maximum.reduce(value, axis=None))
        if low >= 0.0 or not np.isfinite(low + high):
            return low, high, 0
        if high < 0.0:
            return low, high, value.size
        # None: not counted here, the histogram's compiled loop counts them as it bins (kernels.py)
        return low, high, None if signs_counted else int(np.count_nonzero(value < 0))

    extremes = {}
    for name, (low, high, negatives) in zip(floats, workers.map(reduce, floats)):
        if name in allowed and not np.isnan(low + high) and not (abs(low) < MASK_SENTINEL > abs(high)):
            if unbounded is not None:
                unbounded.add(name)
            continue
        if not (np.isfinite(low) and np.isfinite(high)):
            return extremes, name
        extremes[name] = (low, high, negatives)
    return extremes, None


def _sample_with_bad_activation(session, names, dataset, indices, tensor) -> int:
    """Which sample of a failing batch produced the non-finite value (re-runs it one by one)."""
    for index in indices:
        value = session.run([tensor], dict(dataset.sample(index)))[0]
        if value.size and not np.all(np.isfinite(value)):
            return index
    return indices[0]


def collect(
    model: onnx.ModelProto,
    dataset,
    contexts: dict[str, TensorContext],
    settings: dict,
    progress: Callable[[int, int], None] | None = None,
    keep_outputs: Callable[[int, list[np.ndarray]], None] | None = None,
    infos: dict | None = None,
    unbounded: set[str] | None = None,
) -> tuple[dict[str, TensorHistogram], int]:
    """Histograms of every tensor in `contexts`; returns (histograms, number of samples used).
    Tensors that carried a mask's infinities (module docstring) get no histogram and are added to
    `unbounded` when given.

    `keep_outputs(sample index, graph outputs)` is called for each sample run on its own whose
    graph outputs are all among the fetched tensors (the FP32 outputs, for checks that would
    otherwise run the model again). `infos`: `shape_infos(model)` when the caller has them."""
    indices = sample_indices(len(dataset), settings.get("max_samples"))
    if not indices:
        raise UserError("calibration set is empty; pass a dataset with at least one sample")
    rounds = max(1, min(int(settings.get("rounds", 4)), len(indices)))
    batch_size = static_batch_size(model, settings.get("batch_size", 1))
    names = list(contexts)
    input_names = {v.name for v in graph.graph_inputs(model)}
    outputs = [o.name for o in model.graph.output]
    infos = shape_infos(model) if infos is None else infos
    chunks = tensor_chunks(model, names, batch_size, float(settings.get("max_exposed_mb", 1024)), infos)
    num_bins = int(settings.get("num_bins", 2048))
    hists = {name: TensorHistogram(name, num_bins, rounds) for name in names}
    skipped: set[str] = set()
    allowed = unbounded_candidates(model) - input_names
    found: set[str] = set()
    total, done = len(indices) * len(chunks), 0
    with Workers() as workers:
        for chunk in chunks:
            session = graph.make_session(graph.expose_tensors(model, [n for n in chunk if n not in input_names], infos))
            fetch = [n for n in chunk if n not in input_names]
            keep = keep_outputs if keep_outputs is not None and set(outputs) <= set(fetch) else None
            pending = _Pending(workers)
            for round_index, batch_indices, feed in batches(dataset, indices, rounds, batch_size):
                _check_inputs(feed, batch_indices)
                arrays = dict(zip(fetch, session.run(fetch, feed))) if fetch else {}
                if keep is not None and len(batch_indices) == 1:
                    keep(batch_indices[0], [arrays[name] for name in outputs])
                arrays.update({n: np.asarray(feed[n]) for n in chunk if n in input_names and n in feed})
                bad = _bin_batch(arrays, chunk, round_index, pending, hists, skipped, allowed, found)
                del arrays  # before the next batch's activations exist (peak: one batch)
                if bad is not None:
                    index = _sample_with_bad_activation(session, chunk, dataset, batch_indices, bad)
                    cause = nonfinite_cause(model, bad)
                    if cause:  # the inputs are finite (checked above): the model's own numbers
                        raise UserError(f"calibration sample {index}: tensor '{bad}' contains NaN or Inf from "
                                        f"finite inputs: {cause}; the model is broken there, not the data: "
                                        "fix and re-export it")
                    raise UserError(
                        f"calibration sample {index}: tensor '{bad}' contains NaN or Inf; check that sample's "
                        "preprocessing or drop it from the calibration set"
                    )
                done += len(batch_indices)
                if progress is not None:
                    progress(done, total)
            pending.flush(hists)
    for name in skipped | found:
        hists.pop(name, None)
    if unbounded is not None:
        unbounded.update(found)
    return hists, len(indices)


def _bin_batch(arrays: dict, chunk: list[str], round_index: int, pending: "_Pending", hists: dict,
               skipped: set, allowed: set[str] = frozenset(), unbounded: set[str] | None = None) -> str | None:
    """Fold one batch's activations into the histograms; returns the first tensor holding a NaN or
    Inf (nothing is binned then), else None. Non-float tensors go to `skipped`."""
    extremes, bad = _extremes(arrays, chunk, pending.workers, allowed, unbounded)
    if bad is not None:
        return bad
    if round_index != pending.round_index:
        pending.flush(hists)
        pending.round_index = round_index
    for name in chunk:
        value = arrays.get(name)
        if value is None or value.dtype.kind != "f":
            skipped.add(name)
            continue
        if unbounded is not None and name in unbounded:
            continue
        pending.add(name, value, extremes.get(name))
    pending.bin_direct(hists)
    pending.batches += 1
    if pending.nbytes >= PENDING_BYTES or pending.batches >= PENDING_BATCHES:
        pending.flush(hists)
    return None


PENDING_BYTES = 32 * 2**20  # small activations held back per flush (all tensors together)
PENDING_BATCHES = 16  # ... and at most this many batches of them
DIRECT_BYTES = 2 * 2**20  # an activation this large is binned with its batch (nothing to amortize)
BINNING_THREADS = 4  # at most this many tensors binned at once (and no more than the host's cores)
TASKS_PER_THREAD = 4  # runs of consecutive tensors per thread and map (balance vs per-task overhead)


class Workers:
    """Runs one task per tensor on a few threads, results in input order.

    Why threads: numpy's reductions, the index computation and (in part) bincount run without the
    GIL, and every tensor has its own histogram, so tensors of one batch bin side by side with no
    shared state; counts are integers, hence the same whatever the order. One core: inline.
    """

    def __init__(self, threads: int | None = None):
        threads = min(BINNING_THREADS, os.cpu_count() or 1) if threads is None else threads
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="edgepipe-bin") if threads > 1 else None

    def map(self, task: Callable, items: list, run: int | None = None) -> list:
        """[task(item) for item in items], the items split into a few runs of consecutive items
        per thread (one future per item cost more than binning a small tensor), or into runs of
        `run` items (1: tasks long enough to pay for a future each balance best one by one)."""
        if self.pool is None or len(items) < 2:
            return [task(item) for item in items]
        size = run or -(-len(items) // (self.threads * TASKS_PER_THREAD))
        runs = [items[start : start + size] for start in range(0, len(items), size)]
        return [result for run in self.pool.map(lambda run: [task(item) for item in run], runs) for result in run]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pending:
    """Small activations of consecutive batches of one round, binned together on flush.

    Why: most activations of edge models are small (median ~14k values on PP-OCR), where the
    ~10 numpy calls of one histogram update cost more than the data. Binning several batches per
    tensor together (TensorHistogram.update_parts) gives one bincount per tensor per flush.
    Memory stays bounded whatever the number of samples: a flush happens whenever PENDING_BYTES
    are held, every PENDING_BATCHES batches, at every round boundary (counts are per round) and at
    the end; activations of DIRECT_BYTES or more are binned with their own batch (`bin_direct`).
    Binning is exact and order-independent (histogram.py), so the counts are the same as with one
    update per batch.
    """

    def __init__(self, workers: Workers | None = None):
        self.items: dict[str, list[tuple[np.ndarray, tuple[float, float, int] | None]]] = {}
        self.direct: list[tuple[str, np.ndarray, tuple[float, float, int] | None]] = []
        self.nbytes = 0
        self.batches = 0
        self.round_index = 0
        self.workers = workers or Workers(1)

    def add(self, name: str, value: np.ndarray, extremes: tuple[float, float, int] | None) -> None:
        if not value.size:
            return
        if value.nbytes >= DIRECT_BYTES:
            self.direct.append((name, value, extremes))
            return
        self.items.setdefault(name, []).append((value, extremes))
        self.nbytes += value.nbytes

    def bin_direct(self, hists: dict) -> None:
        """Bin this batch's large activations now (one task per tensor: a name occurs once per batch)."""
        round_index = self.round_index
        self.workers.map(lambda item: hists[item[0]].update(item[1], round_index, item[2]), self.direct)
        self.direct.clear()

    def flush(self, hists: dict) -> None:
        round_index = self.round_index

        def bin_tensor(item) -> None:
            name, items = item
            if len(items) == 1:
                hists[name].update(items[0][0], round_index, items[0][1])
                return
            known = [e for _, e in items if e is not None]
            negatives = None if any(e[2] is None for e in known) else sum(e[2] for e in known)
            extremes = (min(e[0] for e in known), max(e[1] for e in known), negatives) \
                if len(known) == len(items) else None
            hists[name].update_parts([value for value, _ in items], round_index, extremes)

        self.workers.map(bin_tensor, list(self.items.items()))
        self.items.clear()
        self.nbytes = 0
        self.batches = 0


def _check_inputs(feed: dict, batch_indices: list[int]) -> None:
    for name, value in feed.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating) or np.all(np.isfinite(value)):
            continue
        per_sample = value.reshape(value.shape[0], -1) if value.ndim and value.shape[0] == len(batch_indices) else None
        where = batch_indices[0]
        if per_sample is not None:
            where = batch_indices[int(np.flatnonzero(~np.all(np.isfinite(per_sample), axis=1))[0])]
        raise UserError(
            f"calibration sample {where}: input '{name}' contains NaN or Inf; fix or drop that sample"
        )
