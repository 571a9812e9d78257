"""Run one ONNX Runtime session over many feeds: a few at a time, into kept output memory.

Why: the build's checks (bias correction, the output effect of unstable thresholds) run small
models sample by sample.
- One run of such a model keeps only part of a multi-core host busy (many small ops, each too
  short to split well over the intra-op threads). `InferenceSession.run` releases the GIL and
  may be called from several threads at once, so `run_feeds` keeps two samples in flight.
- A run that fetches many intermediate tensors gets them in freshly allocated memory, which the
  C library returns to the kernel when the caller drops them and maps again on the next run:
  every page is faulted in anew on every sample, which can cost more than the model's
  arithmetic. When the caller only needs a summary of each run (`reduce`), the outputs are
  written into buffers that stay allocated (`ReusedOutputs`, ONNX Runtime's IOBinding).

Neither changes a value: every run uses the same session, hence the same kernels and intra-op
thread count, on the same inputs; buffers are aligned as ONNX Runtime aligns its own, so a
kernel reading a bound tensor sees the same alignment; and results come back in feed order, so
whatever the caller accumulates from them is summed in the same order as one run after another.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

STREAMS = 2  # samples in flight (not more than the host's cores)
ALIGNMENT = 64  # bytes, as onnxruntime's CPU allocator


def run_feeds(session, feeds: list[dict], names: list[str] | None = None,
              reduce: Callable[[list], object] | None = None, streams: int | None = None) -> list:
    """[reduce(session.run(names, feed)) for feed in feeds] (reduce: identity when None), with
    up to `streams` runs at once (default: STREAMS, at most the number of cores). With `reduce`,
    the outputs it sees are valid only during its call (they live in reused buffers)."""
    names = list(names) if names is not None else [o.name for o in session.get_outputs()]
    local = threading.local()

    def one(feed):
        if reduce is None:
            return session.run(names, feed)
        if not hasattr(local, "runner"):
            local.runner = ReusedOutputs(session, names)
        outputs = local.runner.run(feed)
        return reduce([outputs[name] for name in names])

    streams = min(STREAMS, os.cpu_count() or 1) if streams is None else streams
    if streams < 2 or len(feeds) < 2:
        return [one(feed) for feed in feeds]
    with ThreadPoolExecutor(streams, thread_name_prefix="edgepipe-run") as pool:
        return list(pool.map(one, feeds))


def built_ahead(build: Callable, items: list):
    """build(item) for each item, in order, each built on a worker thread while the caller uses
    the one before (one build ahead, never more): a Python-heavy build (a Q/DQ model and its
    session) overlaps the runs of the previous one, which release the GIL."""
    if len(items) < 2 or (os.cpu_count() or 1) < 2:
        yield from (build(item) for item in items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="edgepipe-build") as pool:
        upcoming = pool.submit(build, items[0])
        for index in range(len(items)):
            current = upcoming.result()
            upcoming = pool.submit(build, items[index + 1]) if index + 1 < len(items) else None
            yield current
            del current


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """np.empty(shape, dtype) whose data starts on an ALIGNMENT-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class ReusedOutputs:
    """`run(feed)` = dict(zip(names, session.run(names, feed))), written into buffers kept from
    run to run: the arrays it returns are valid until the next `run`.

    The first run of a feed shape is a plain run that tells the output shapes and types; later
    runs with the same feed shapes are bound to buffers of those shapes. Anything binding cannot
    serve (an output that is not a plain numeric tensor, a shape that changes with the values,
    an error) is run with `session.run` from then on, as without this class."""

    def __init__(self, session, names: list[str]):
        self.session = session
        self.names = list(names)
        self.binding = None
        self.buffers: dict[str, np.ndarray] = {}
        self.signature = None  # the feed's (name, shape, dtype) the buffers are shaped for
        self.usable = True

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(value) for name, value in feed.items()}
        signature = tuple((name, value.shape, value.dtype.str) for name, value in sorted(feed.items()))
        if self.usable and self.binding is not None and signature == self.signature:
            try:
                for name, value in feed.items():
                    self.binding.bind_cpu_input(name, value)
                self.session.run_with_iobinding(self.binding)
                return dict(self.buffers)
            except Exception:  # e.g. an output whose shape depends on the values
                self.usable, self.binding = False, None
        arrays = dict(zip(self.names, self.session.run(self.names, feed)))
        if self.usable:
            self._bind(arrays, signature)
        return arrays

    def _bind(self, arrays: dict, signature) -> None:
        """Buffers shaped like `arrays` for the next runs with the same feed shapes."""
        if not all(isinstance(a, np.ndarray) and a.dtype.kind in "fiub" and a.size for a in arrays.values()):
            self.usable = False  # sequences, maps, strings, empty tensors: plain runs
            return
        self.binding, self.signature = self.session.io_binding(), signature
        self.buffers = {name: aligned_empty(a.shape, a.dtype) for name, a in arrays.items()}
        for name, buffer in self.buffers.items():
            self.binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
