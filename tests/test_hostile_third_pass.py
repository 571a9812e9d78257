"""Third hostile-input pass: findings outside the output-path checks (tests/test_output_paths.py)."""

from __future__ import annotations

import pytest

from edgepipe.errors import UserError
from edgepipe.targets import load_target


@pytest.mark.parametrize("text, fragment", [
    ("base: arm-cpu\noptions: {per_channel: false}\n", "options.per_channel is not an option target 'arm-cpu'"),
    ("base: arm-cpu\noptions: {build_engine: true}\n", "options.build_engine"),
    ("base: jetson\noptions: {workspace: 512}\n", "did you mean 'workspace_mb'?"),
])
def test_profile_option_the_target_does_not_read_is_refused(tmp_path, text, fragment):
    (tmp_path / "board.yaml").write_text(text)
    with pytest.raises(UserError, match="board.yaml") as info:
        load_target(str(tmp_path / "board.yaml"))
    assert fragment in str(info.value)


def test_profile_chain_names_the_profile_with_the_unknown_option(tmp_path):
    (tmp_path / "common.yaml").write_text("base: arm-cpu\noptions: {threads: 3, int8_io: true}\n")
    (tmp_path / "board.yaml").write_text("base: common.yaml\noptions: {keep_layuot: true}\n")
    assert load_target(str(tmp_path / "common.yaml")).options["threads"] == 3
    with pytest.raises(UserError, match=r"board.yaml: options.keep_layuot .* did you mean 'keep_layout'"):
        load_target(str(tmp_path / "board.yaml"))


def test_a_plugins_own_default_option_is_accepted(tmp_path, monkeypatch):
    from edgepipe.targets import _load_plugin

    monkeypatch.setattr(_load_plugin("arm-cpu"), "default_options", {"threads": 2, "big_cores_only": False})
    (tmp_path / "board.yaml").write_text("base: arm-cpu\noptions: {big_cores_only: true}\n")
    assert load_target(str(tmp_path / "board.yaml")).options["big_cores_only"] is True
