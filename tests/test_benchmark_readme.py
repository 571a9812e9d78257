"""The README's benchmark figures come from benchmarks/results, and the timing helper's rules.

Why: a table typed by hand, or left behind when a benchmark is re-run, silently stops describing
the code. The tables that `benchmarks/summarize.py` renders from a results file must appear in
the README line for line, and every results file the benchmark texts name must exist.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import summarize  # noqa: E402

from benchmarks import timing  # noqa: E402

# results rendered by summarize.py whose table the README shows verbatim (the others are quoted
# in prose or curated: calibration speed, ONNX conformance, int16, per-op XNNPACK)
README_TABLES = ["real_model_corpus", "calibration_vs_peers", "calibration_scaling", "tflite_latency",
                 "tflite_vs_ai_edge_quantizer", "accuracy_recovery", "build_stages", "arm_speed", "arm_speed_amx_host",
                 "arm_kernel_profile", "bounded_cost",
                 "accuracy_goals", "precision_search"]
# file names a benchmark text mentions that are bundle files, not results
BUNDLE_FILES = {"calibration", "manifest", "precision", "compare", "sensitivity"}


def benchmark_texts() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Benchmarks"):readme.index("\n## ", readme.index("## Benchmarks") + 1)]
    return section + (ROOT / "benchmarks" / "README.md").read_text()


@pytest.mark.parametrize("name", README_TABLES)
def test_readme_table_is_the_rendered_results_file(name):
    render = next(render for _, stem, render in summarize.SECTIONS if stem == name)
    data = summarize.load(name)
    assert data is not None, f"benchmarks/results/{name}.json is missing"
    text = benchmark_texts()
    rendered = [line for line in render(data) if line.strip()]
    missing = [line for line in rendered if line not in text]
    assert not missing, (f"{len(missing)} of {len(rendered)} lines of `python benchmarks/summarize.py`'s {name} "
                         f"section are not in the README (re-run it and paste the table): {missing[:3]}")


def test_every_results_file_the_benchmark_texts_name_exists():
    named = set(re.findall(r"([A-Za-z0-9_]+)\.json", benchmark_texts())) - BUNDLE_FILES
    assert named, "the benchmark texts name no results file"
    missing = sorted(n for n in named if not (ROOT / "benchmarks" / "results" / f"{n}.json").exists())
    assert not missing, f"named in the README but not in benchmarks/results: {missing}"


def test_alternating_rounds_counts_and_medians():
    calls = {"a": 0, "b": 0}

    def invoker(key):
        def invoke():
            calls[key] += 1
        return invoke

    timed = timing.alternating_rounds({"a": invoker("a"), "b": invoker("b")}, rounds=3, iterations=4, warmup=2)
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    for row in timed.values():
        assert len(row["round_ms"]) == 3 and min(row["round_ms"]) <= row["ms"] <= max(row["round_ms"])
        assert row["spread"] >= 0


def test_fewer_than_three_rounds_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        timing.alternating_rounds({"a": lambda: None}, rounds=2, iterations=1)
    with pytest.raises(ValueError, match="at least 3"):
        timing.repeated_seconds(lambda: None, repeats=1)


def test_summary_median_runs_and_spread():
    row = timing.summary([3.0, 1.0, 2.0])
    assert row == {"median": 2.0, "runs": [3.0, 1.0, 2.0], "spread": 1.0}


def test_host_record_names_cpu_features_and_load():
    host = timing.host_record()
    assert {"flags", "int8_dot_product", "cores", "loadavg"} <= set(host)
    assert len(host["loadavg"]) == 3


def test_corpus_table_checks_with_the_rule_the_corpus_test_asserts():
    """One fp32 rule (tests/realmodels/checks.py) for tests/test_real_models.py and the README's
    corpus table: 1e-4, or 4x the file's own float noise where that is larger."""
    from tests.realmodels import checks

    assert summarize.fp32_tolerance is checks.fp32_tolerance
    assert summarize._fp32_ok({}, {"fp32_max_rel_error": 0.9e-4})
    assert not summarize._fp32_ok({}, {"fp32_max_rel_error": 1.1e-4})
    noisy = {"ort_float_noise": 1e-4}
    assert summarize._fp32_ok(noisy, {"fp32_max_rel_error": 3.9e-4})
    assert not summarize._fp32_ok(noisy, {"fp32_max_rel_error": 4.1e-4})
    import subprocess  # and summarize.py, a pure-JSON script, imports the rule without numpy or onnx

    probe = "import sys; sys.argv = ['x']; import summarize; print('numpy' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "benchmarks", capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr


def test_arm_speed_keeps_rows_only_from_a_cpu_with_the_same_features(tmp_path):
    """A `--models` subset run merges into the results file: rows timed on another CPU (a ratio
    belongs to the CPU that ran it: AMX, VNNI, ARM dot product) must not stay under this host's
    record."""
    from benchmarks.arm_speed import same_host_rows

    rows = {"ocr_cls": {"latency_ms": {}}}
    here, elsewhere = tmp_path / "here.json", tmp_path / "elsewhere.json"
    other_cpu = {**timing.cpu_features(), "cpu": "another CPU"}
    here.write_text(json.dumps({"host": timing.cpu_features(), "models": rows}))
    elsewhere.write_text(json.dumps({"host": other_cpu, "models": rows}))
    assert same_host_rows(here) == rows
    assert same_host_rows(elsewhere) == {}
    assert same_host_rows(tmp_path / "missing.json") == {}


def test_arm_speed_feeds_token_inputs_ids_every_table_holds():
    """Random normals cast to int32 are negative ids (tashkeel_rawi's GATHER refused them and the
    whole arm_speed run lost its rows); integer inputs get zeros, float inputs random values."""
    import numpy as np

    from benchmarks.arm_speed import feed_for

    fed = {}

    class Interpreter:
        def get_input_details(self):
            return [{"index": 0, "shape": [1, 256], "dtype": np.int32}, {"index": 1, "shape": [1, 8], "dtype": np.float32}]

        def set_tensor(self, index, value):
            fed[index] = value

    feed_for(Interpreter())
    assert fed[0].dtype == np.int32 and fed[0].min() >= 0
    assert fed[1].dtype == np.float32 and fed[1].std() > 0
