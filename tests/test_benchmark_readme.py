"""The README's benchmark figures come from benchmarks/results, and the timing helper's rules.

Why: a table typed by hand, or left behind when a benchmark is re-run, silently stops describing
the code. The tables that `benchmarks/summarize.py` renders from a results file must appear in
the README line for line, and every results file the benchmark texts name must exist.
"""

from __future__ import annotations

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
                 "tflite_vs_ai_edge_quantizer", "accuracy_recovery", "build_stages", "arm_speed", "bounded_cost",
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
