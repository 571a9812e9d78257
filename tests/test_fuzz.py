"""Bounded fuzzing of everything that parses user files: a bad file must end in a clean
`UserError` (one line, exit 2 at the CLI), never in a crash or an unrelated exception.

Seeded byte-level mutations (bit flips, truncations, spliced garbage) of valid inputs, with a
time budget per target so the suite stays fast; a failure prints the seed to reproduce it.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from edgepipe import config, graph
from edgepipe.data import load_dataset
from edgepipe.errors import UserError
from tests.helpers import tiny_conv_model

TIME_BUDGET_S = 6.0


def mutations(data: bytes, seed: int):
    """Yield mutated copies of `data` until the time budget is spent."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + TIME_BUDGET_S
    count = 0
    while time.monotonic() < deadline and count < 400:
        buffer = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:  # bit flips
            for _ in range(int(rng.integers(1, 8))):
                position = int(rng.integers(len(buffer)))
                buffer[position] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # truncation
            buffer = buffer[: int(rng.integers(0, len(buffer)))]
        elif kind == 2:  # spliced garbage
            position = int(rng.integers(len(buffer)))
            buffer[position:position] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        else:  # overwrite a run of bytes
            position = int(rng.integers(len(buffer)))
            length = int(rng.integers(1, 32))
            buffer[position:position + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        count += 1
        yield count, bytes(buffer)


@pytest.mark.parametrize("seed", [1, 2])
def test_onnx_loader_never_crashes(tmp_path, seed):
    valid = tiny_conv_model().SerializeToString()
    path = tmp_path / "fuzz.onnx"
    outcomes = {"loaded": 0, "rejected": 0}
    for index, data in mutations(valid, seed):
        path.write_bytes(data)
        try:
            model = graph.load_model(path)
        except UserError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, (seed, index, message)
            outcomes["rejected"] += 1
            continue
        except Exception as exc:  # pragma: no cover - the failure we are looking for
            pytest.fail(f"seed {seed} mutation {index}: {type(exc).__name__}: {exc}")
        assert isinstance(model, onnx.ModelProto)
        outcomes["loaded"] += 1
    assert outcomes["rejected"] > 0  # the fuzzer really produced bad files


@pytest.mark.parametrize("seed", [3])
def test_npz_loader_never_crashes(tmp_path, seed):
    source = tmp_path / "valid.npz"
    np.savez(source, x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32),
             labels=np.arange(4))
    specs = {"x": ((1, 3, 8, 8), np.float32)}
    path = tmp_path / "fuzz.npz"
    rejected = 0
    for index, data in mutations(source.read_bytes(), seed):
        path.write_bytes(data)
        try:
            dataset = load_dataset(path, specs)
            for i in range(len(dataset)):
                dataset.sample(i)
        except UserError:
            rejected += 1
        except Exception as exc:  # pragma: no cover
            pytest.fail(f"seed {seed} mutation {index}: {type(exc).__name__}: {exc}")
    assert rejected > 0


@pytest.mark.parametrize("seed", [4, 11])
def test_config_loader_never_crashes(tmp_path, seed):
    valid = (b"target: arm-cpu\ncalibration:\n  method: entropy\n  overrides: {Softmax: minmax}\n"
             b"fold:\n  input_normalization: zca\npreprocess:\n  size: [32, 32]\n")
    path = tmp_path / "edgepipe.yaml"
    for index, data in mutations(valid, seed):
        path.write_bytes(data)
        try:
            config.load_config_file(path)
        except UserError:
            pass
        except Exception as exc:  # pragma: no cover
            pytest.fail(f"seed {seed} mutation {index}: {type(exc).__name__}: {exc}")
