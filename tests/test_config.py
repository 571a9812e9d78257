import pytest

from edgepipe import config
from edgepipe.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "edgepipe.yaml"
    path.write_text(text)
    return path


def test_defaults_cover_every_schema_key():
    values = config.defaults()
    assert values["calibration"]["method"] == "auto"
    assert values["fold"]["batchnorm"] is True
    assert set(values) == set(config.SCHEMA)


def test_valid_file_loads(tmp_path):
    data = config.load_config_file(write(tmp_path, "target: arm-cpu\ncalibration:\n  method: entropy\n  percentile: 99.9\n"))
    assert data["calibration"]["method"] == "entropy"


def test_unknown_top_level_key_names_key_and_allowed(tmp_path):
    with pytest.raises(UserError) as info:
        config.load_config_file(write(tmp_path, "calibraton: {}\n"))
    message = str(info.value)
    assert "unknown key 'calibraton'" in message and "calibration" in message


def test_unknown_nested_key_uses_dotted_name(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'fold\.whiten'"):
        config.load_config_file(write(tmp_path, "fold:\n  whiten: zca\n"))


def test_wrong_type_names_key_and_type(tmp_path):
    with pytest.raises(UserError, match=r"'calibration\.num_bins' must be int, got str"):
        config.load_config_file(write(tmp_path, "calibration:\n  num_bins: many\n"))


def test_bool_is_not_accepted_as_int(tmp_path):
    with pytest.raises(UserError, match="num_bins"):
        config.load_config_file(write(tmp_path, "calibration:\n  num_bins: true\n"))


def test_choice_violation_lists_choices(tmp_path):
    with pytest.raises(UserError, match="must be one of auto, entropy"):
        config.load_config_file(write(tmp_path, "calibration:\n  method: kl\n"))


def test_bad_yaml_reports_line(tmp_path):
    with pytest.raises(UserError, match="not valid YAML at line 2"):
        config.load_config_file(write(tmp_path, "target: arm-cpu\n  bad: [\n"))


def test_non_mapping_top_level(tmp_path):
    with pytest.raises(UserError, match="must be a mapping"):
        config.load_config_file(write(tmp_path, "- a\n- b\n"))


def test_yaml_tags_are_not_executed(tmp_path):
    # safe_load refuses python object tags instead of constructing them
    with pytest.raises(UserError, match="not valid YAML"):
        config.load_config_file(write(tmp_path, "target: !!python/object/apply:os.system ['true']\n"))


def test_merge_is_deep_and_ignores_none():
    base = config.defaults()
    merged = config.merge(base, {"calibration": {"method": "mse"}, "target": None})
    assert merged["calibration"]["method"] == "mse"
    assert merged["calibration"]["num_bins"] == 2048
    assert merged["target"] is None and base["calibration"]["method"] == "auto"


@pytest.mark.parametrize("text,expected", [("x:1x3x8x8", ("x", [1, 3, 8, 8])), ("a:b:2X4", ("a:b", [2, 4]))])
def test_parse_input_shape(text, expected):
    assert config.parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x:", "x:1xax3", "x:0x3"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(UserError, match="--input-shape"):
        config.parse_input_shape(text)


def test_reference_rows_document_every_leaf():
    rows = config.reference_rows()
    keys = {row[0] for row in rows}
    assert "calibration.method" in keys and "fold.input_normalization" in keys and "model" in keys
    assert all(row[3] or row[0] for row in rows)


def test_readme_documents_every_config_key():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [row[0] for row in config.reference_rows() if f"`{row[0]}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"


def test_typed_sections_match_the_schema_field_for_field():
    """Each typed section has one field per schema key with the schema's default, so neither can drift."""
    import dataclasses

    from edgepipe.settings import SECTION_TYPES

    assert {"report", "precision", "regress"} <= set(SECTION_TYPES)
    for section, cls in SECTION_TYPES.items():
        schema = config.SCHEMA[section]
        assert [f.name for f in dataclasses.fields(cls)] == list(schema), section
        built = cls()
        for key, spec in schema.items():
            default = tuple(spec.default) if isinstance(spec.default, list) else spec.default  # lists held as tuples
            assert getattr(built, key) == default, f"{section}.{key}"
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, next(iter(schema)), None)


def test_resolve_settings_passes_the_sections_typed(tmp_path, monkeypatch):
    from edgepipe.settings import PrecisionSettings, ReportSettings, resolve_settings

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "model: m.onnx\nreport:\n  eval_limit: 7\n  min_agreement: 0.5\n"
                           "precision:\n  float_nodes: [conv1]\n")
    settings, origin = resolve_settings({"target": "arm-cpu", "report": {"host": False}}, str(path))
    assert origin == "config"
    assert settings["report"] == ReportSettings(host=False, eval_limit=7, min_agreement=0.5)
    assert settings["report"].iterations == config.SCHEMA["report"]["iterations"].default
    assert settings["precision"] == PrecisionSettings(budget=None, float_nodes=("conv1",))
    with pytest.raises(UserError, match="report.eval_limit"):
        resolve_settings({"target": "arm-cpu"}, str(write(tmp_path, "report:\n  eval_limit: 0\n")))


@pytest.mark.parametrize("budget", [0.01, 0, {"max_drop": 0.02}, {"min_sqnr_db": 30.3}, {"min_sqnr_db": -5}, {"max_sequence_drop": 0.002}])
def test_precision_budget_forms_accepted(budget):
    config.validate({"precision": {"budget": budget}})


@pytest.mark.parametrize("budget", [{"min_sqnr": 30}, {"max_drop": -0.1}, {"max_sequence_drop": -0.1}, {"min_sqnr_db": True}, {"min_sqnr_db": "30"},
                                    {"min_sqnr_db": 30, "max_drop": 0.1}, {}, {"min_sqnr_db": float("nan")}, -0.5])
def test_precision_budget_bad_forms_refused_in_one_line(budget):
    with pytest.raises(UserError) as err:
        config.validate({"precision": {"budget": budget}})
    assert "'precision.budget' must be" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("target", "yaml", "expected"), [
    ("arm-cpu", "", (True, "depthwise")),  # unset: arm-cpu's fold_defaults
    ("jetson", "", (False, False)),  # unset elsewhere: off
    ("arm-cpu", "fold:\n  constant_affine: false\n  cross_layer_equalization: false\n", (False, False)),
    ("jetson", "fold:\n  constant_affine: true\n  cross_layer_equalization: depthwise\n", (True, "depthwise")),
])
def test_unset_fold_keys_take_the_targets_defaults_and_a_set_value_wins(tmp_path, target, yaml, expected):
    from edgepipe.settings import fold_settings_of, resolve_settings
    from edgepipe.targets import load_target

    settings, _ = resolve_settings({"target": target}, str(write(tmp_path, f"target: {target}\n{yaml}")))
    fold = fold_settings_of(settings, load_target(target))
    assert (fold["constant_affine"], fold["cross_layer_equalization"]) == expected
