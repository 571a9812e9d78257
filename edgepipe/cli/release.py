"""Release commands: `pack`, `verify`, `report`, `regress` (added to the main CLI by `register`).

Thin on purpose: parse options, call bundle/archive/report/regress, print. Problems the user can
fix raise UserError (exit 2); a bundle that fails verification or a broken regression budget
raises a BudgetError (exit 1); the main CLI turns both into one line and an exit code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from edgepipe.errors import BudgetError, UserError, one_line


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


@click.command("pack")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="archive path (default: <bundle>.tar.gz next to the bundle)")
def pack_command(bundle: Path, output: Path | None) -> None:
    """Verify BUNDLE and write it as a reproducible .tar.gz (report/ is left out)."""
    from edgepipe.delivery.archive import pack_bundle
    from edgepipe.delivery.bundle import sha256_file

    if not bundle.is_dir():
        raise UserError(f"{bundle}: not a bundle folder; pass the --out folder of `edgepipe build`")
    output = output or bundle.resolve().parent / f"{bundle.resolve().name}.tar.gz"
    pack_bundle(bundle, output)
    click.echo(f"{one_line(output)}  sha256 {sha256_file(output)}")


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
def verify_command(bundle: Path) -> None:
    """Check every file of BUNDLE (a folder or a .tar.gz) against its manifest and SHA256SUMS."""
    from edgepipe.delivery.archive import bundle_root, safe_extract
    from edgepipe.delivery.bundle import VerificationError, verified_file_count, verify_bundle

    if not bundle.exists():
        raise UserError(f"{bundle}: not found; pass a bundle folder or its .tar.gz")
    with tempfile.TemporaryDirectory(prefix="edgepipe-verify-") as tmp:
        root = bundle_root(safe_extract(bundle, Path(tmp)), Path(bundle)) if _is_archive(bundle) else bundle
        problems = verify_bundle(root)
        if problems:
            for problem in problems:
                click.echo(f"BAD: {one_line(problem)}", err=True)
            raise VerificationError(f"{bundle}: {len(problems)} problem(s); rebuild or re-copy the bundle")
        click.echo(f"OK: {verified_file_count(root)} files verified")


@click.command("report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="results.json to compare with")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="output folder (default: next to RESULTS)")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="bundle folder holding calibration.json / sensitivity.json (default: searched near RESULTS)")
def report_command(results: Path, baseline: Path | None, out_dir: Path | None, bundle_dir: Path | None) -> None:
    """Render RESULTS (run.py's results.json) as report.html and report.md."""
    from edgepipe.delivery.report import render_report
    from edgepipe.output_files import check_output_folder, check_report_files

    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    else:
        check_report_files(results.parent)  # written beside RESULTS: never over a user's own report.md
    html = render_report(results, out_dir=out_dir, bundle_dir=bundle_dir, baseline=baseline)
    click.echo(f"{one_line(html)}\n{one_line(html.with_name('report.md'))}")


def _config_budgets(config: Path | None) -> dict:
    """The `regress:` section of --config (validated against the schema), empty without one."""
    if config is None:
        return {}
    from edgepipe.config import load_config_file

    return dict(load_config_file(config).get("regress") or {})


@click.command("regress")
@click.option("--baseline", type=click.Path(path_type=Path), required=True, help="results.json of the last release")
@click.option("--candidate", type=click.Path(path_type=Path), required=True, help="results.json to gate")
@click.option("--max-drop", type=float, default=None, help="max absolute accuracy drop [default 0.01]")
@click.option("--max-latency-increase", default=None, help="max latency increase, e.g. 10%% or 0.1 [default 10%%]")
@click.option("--max-sqnr-drop", type=float, default=None, help="max SQNR drop in dB per output [default 1.0]")
@click.option("--metric", "metrics", multiple=True, help="accuracy metric to compare (repeatable; default: all present)")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="write JUnit XML here")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="edgepipe.yaml with a regress: section")
def regress_command(baseline, candidate, max_drop, max_latency_increase, max_sqnr_drop, metrics, junit, config) -> None:
    """Compare CANDIDATE with BASELINE; exit 1 when an accuracy or latency budget is broken."""
    from edgepipe.delivery.regress import load_results, run_regression
    from edgepipe.settings import RegressSettings

    from edgepipe.output_files import check_output_file
    from edgepipe.safeio import write_text_replacing

    if junit is not None and junit.is_dir():  # checked before the comparison, not after its table
        raise UserError(f"{junit}: is a folder; pass a file path for --junit, e.g. regress.xml")
    if junit is not None:
        check_output_file(junit, "--junit", "xml", {"--baseline": baseline, "--candidate": candidate, "--config": config})

    overrides = {"max_drop": max_drop, "max_latency_increase": max_latency_increase,
                 "max_sqnr_drop_db": max_sqnr_drop, "metrics": list(metrics) or None}
    budgets = RegressSettings(**{**_config_budgets(config), **{k: v for k, v in overrides.items() if v is not None}})
    result = run_regression(load_results(baseline, "baseline"), load_results(candidate, "candidate"), budgets,
                            baseline_name=str(baseline))
    click.echo(result.table())
    if junit:
        write_text_replacing(junit, result.to_junit())
    if not result.passed:
        raise BudgetError(f"{len(result.failures)} regression budget(s) broken: "
                          + "; ".join(c.message for c in result.failures))
    click.echo(f"PASSED: {len(result.checks)} checks within budget")


def register(group: click.Group) -> None:
    """Add the release commands to the main `edgepipe` group."""
    for command in (pack_command, verify_command, report_command, regress_command):
        group.add_command(command)
