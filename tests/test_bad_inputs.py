"""Every row of the bad-input table, through the real CLI entry point (in-process for speed)."""

import os

import pytest

from edgepipe.cli.main import main
from tests.bad_input_cases import CASES


def run_main(args, cwd, capsys):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as info:
            main(list(args))
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return info.value.code, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    args = case.setup(tmp_path)
    code, err = run_main(args, tmp_path, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == case.exit_code, err
    assert "Traceback" not in err
    assert lines, "no message"
    if case.exit_code == 2:
        assert len(lines) == 1, err
        assert lines[0].startswith("error: "), err
    message = "\n".join(lines)
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    out = tmp_path / "out"
    assert not out.exists(), "a failed build left output behind"
    assert not os.path.exists("/tmp/pwned")


def test_readme_lists_every_case():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in readme]
    assert not missing, f"README bad-input table lacks {missing}"
