"""TensorRT calibration cache: the text format TensorRT reads, bit-exact round trip, tensor names."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.backends.tensorrt.cache import (
    decode_scale,
    encode_scale,
    read_calibration_cache,
    tensors_tensorrt_sees,
    trt_version_number,
    write_calibration_cache,
)
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration
from edgepipe.errors import UserError
from tests.helpers import tiny_conv_model

HEADER = re.compile(r"^TRT-(\d+)-EntropyCalibration2$")
LINE = re.compile(r"^(.+): ([0-9a-f]{8})$")


def calibration_for(names, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in names:
        amax = float(rng.uniform(0.01, 50.0))
        tensors[name] = TensorCalibration(name, -amax, amax, amax, -amax, amax, "minmax")
    return CalibrationResult(tensors=tensors)


def bits(value: float) -> int:
    return struct.unpack(">I", struct.pack(">f", value))[0]


def test_cache_format_and_bit_exact_round_trip(tmp_path):
    model = tiny_conv_model()
    names = sorted(tensors_tensorrt_sees(model))
    calibration = calibration_for(names)
    path = write_calibration_cache(calibration, tmp_path / "calibration.cache", trt_version="10.9.0", model=model)
    lines = path.read_text().splitlines()
    assert HEADER.match(lines[0]).group(1) == "100900"
    parsed = {}
    for line in lines[1:]:
        name, hex_digits = LINE.match(line).groups()
        # independent decode: the 8 hex digits are the big-endian bit pattern of the float32 scale
        parsed[name] = float(np.array([int(hex_digits, 16)], dtype=np.uint32).view(np.float32)[0])
    assert set(parsed) == set(names)
    read = read_calibration_cache(path)
    for name in names:
        expected = np.float32(calibration.tensors[name].amax / 127)
        assert bits(read[name]) == bits(parsed[name]) == bits(float(expected)), name


def test_cache_names_are_those_tensorrt_sees(tmp_path):
    model = tiny_conv_model()
    visible = tensors_tensorrt_sees(model)
    assert visible == {"x", "c", "r", "g", "f", "y"}  # graph input + every node output of helpers.tiny_conv_model
    calibration = calibration_for(sorted(visible) + ["not_in_model"])
    path = write_calibration_cache(calibration, tmp_path / "c.cache", model=model)
    assert set(read_calibration_cache(path)) == visible
    assert "w" not in read_calibration_cache(path), "weights are never in a calibration cache"


def test_ieee_big_endian_encoding_known_values():
    assert encode_scale(1.0) == "3f800000"  # IEEE-754: sign 0, exponent 127, mantissa 0
    assert encode_scale(0.5) == "3f000000"
    assert encode_scale(2.0 ** -10) == "3a800000"
    assert decode_scale("3f800000") == 1.0 and decode_scale("0x3f000000") == 0.5
    assert len(encode_scale(1e-30)) == 8  # leading zeros kept (some hand-written writers strip them)


@given(st.integers(min_value=0x00800000, max_value=0x7F7FFFFF))  # every positive normal float32
@settings(max_examples=300, deadline=None)
def test_scale_round_trip_property(pattern):
    scale = struct.unpack(">f", struct.pack(">I", pattern))[0]
    assert encode_scale(scale) == f"{pattern:08x}"
    assert bits(decode_scale(encode_scale(scale))) == pattern


def test_version_numbers_follow_tensorrt_scheme():
    assert trt_version_number("8.5.2") == 8502
    assert trt_version_number("8.6.1") == 8601
    assert trt_version_number("10.0.1") == 100001
    assert trt_version_number("10.13.3.9") == 101303
    assert trt_version_number(8601) == 8601


def test_reader_accepts_tensorrt_written_cache_and_rejects_garbage(tmp_path):
    written_by_tensorrt = tmp_path / "trt.cache"
    written_by_tensorrt.write_text("TRT-8601-EntropyCalibration2\ninput.1: 3c010a14\n/conv/Conv_output_0: 3d8e7a1b\n")
    scales = read_calibration_cache(written_by_tensorrt)
    assert set(scales) == {"input.1", "/conv/Conv_output_0"}
    assert bits(scales["input.1"]) == 0x3C010A14
    bad = tmp_path / "bad.cache"
    bad.write_text("not a cache\n")
    with pytest.raises(UserError, match="bad.cache"):
        read_calibration_cache(bad)
    bad.write_text("TRT-8601-EntropyCalibration2\nname: zz\n")
    with pytest.raises(UserError, match=r"bad.cache:2"):
        read_calibration_cache(bad)


def test_empty_intersection_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no calibrated tensor"):
        write_calibration_cache(calibration_for(["other"]), tmp_path / "c.cache", model=tiny_conv_model())
