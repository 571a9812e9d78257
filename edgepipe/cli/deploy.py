"""`edgepipe deploy`: one device (--host) or a fleet (--inventory). Thin: parse, call, print.

Kept out of cli/main.py so the SSH options stay next to each other; main.py calls `register()` and
maps UserError -> exit 2 (bad host, untrusted key, corrupt upload) and BudgetError -> exit 1
(a fleet deploy where some hosts failed after their retry).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgepipe.delivery.deploy import SshTarget, deploy_bundle
from edgepipe.errors import UserError, one_line
from edgepipe.safeio import CONFIG_MAX_BYTES, ensure_regular_file
from edgepipe.delivery.fleet import deploy_fleet, format_table, load_inventory, raise_if_failed, write_fleet_json

MAX_TIMEOUT_S = 86400


@click.command("deploy")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", "destination", metavar="[USER@]HOST", help="Deploy to one device.")
@click.option("--inventory", type=click.Path(path_type=Path),
              help="Ansible INI/YAML inventory: deploy to every host in it.")
@click.option("--port", type=int, default=22, show_default=True, help="SSH port (inventory ansible_port wins).")
@click.option("--identity", type=click.Path(path_type=Path), help="SSH private key file.")
@click.option("--remote-dir", help="Folder on the device [default: ~/edgepipe/<bundle name>].")
@click.option("--run", "run_bundle", is_flag=True, help="Run run.py on the device and fetch results.json.")
@click.option("--iterations", type=click.IntRange(min=1), help="Timed iterations for run.py.")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up iterations for run.py.")
@click.option("--known-hosts", type=click.Path(path_type=Path), help="known_hosts file to trust.")
@click.option("--accept-new-host-key", is_flag=True,
              help="Trust a host key seen for the first time (a changed key is still refused).")
@click.option("--timeout", type=click.FloatRange(min=1), default=20, show_default=True,
              help="Seconds to wait for the SSH connection.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where fetched results go, one <host>/results.json each [default: BUNDLE/report].")
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True,
              help="Hosts deployed at once with --inventory.")
@click.option("--transfer", type=click.Choice(["auto", "rsync", "scp"]), default="auto", show_default=True,
              help="Copy method; auto uses rsync when both sides have it, else scp.")
def deploy_command(bundle, destination, inventory, port, identity, remote_dir, run_bundle, iterations, warmup,
                   known_hosts, accept_new_host_key, timeout, out, parallel, transfer):
    """Copy BUNDLE to a device over SSH, verify its sha256 there, and optionally run it."""
    if bool(destination) == bool(inventory):
        raise UserError("pass exactly one of --host USER@HOST or --inventory FILE")
    if not timeout <= MAX_TIMEOUT_S:  # click's FloatRange lets nan and inf through; ssh refuses a huge ConnectTimeout
        raise UserError(f"--timeout {timeout}: give the seconds to wait for the SSH connection, "
                        f"1 to {MAX_TIMEOUT_S} (e.g. 20)")
    if out is not None and run_bundle:  # fetched results must not land among the bundle's own files
        from edgepipe.output_files import check_output_folder

        check_output_folder(out, "--out")
    if identity is not None:
        ensure_regular_file(identity, CONFIG_MAX_BYTES, "SSH private key (--identity)")
    if known_hosts is not None and (known_hosts.exists() or known_hosts.is_symlink()):
        ensure_regular_file(known_hosts, what="known_hosts file")  # ssh would block on a FIFO
    ssh_options = dict(known_hosts=str(known_hosts) if known_hosts else None,
                       accept_new_host_key=accept_new_host_key, timeout=timeout)
    run_options = dict(run=run_bundle, iterations=iterations, warmup=warmup, out_dir=out, transfer=transfer)
    if destination:
        target = SshTarget.parse(destination, port=port, identity=str(identity) if identity else None,
                                 **ssh_options)
        result = deploy_bundle(bundle, target, remote_dir=remote_dir, **run_options)
        click.echo(one_line(f"{result.host}: deployed to {result.remote_dir} ({result.transfer}, sha256 verified)"))
        if result.results_path:
            latency = result.results.get("latency_ms", {})
            click.echo(one_line(f"{result.host}: p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms "
                                f"-> {result.results_path}"))  # figures the device wrote: one line, inert
        for note in result.notes:
            click.echo(f"note: {one_line(note)}", err=True)
        return
    hosts = load_inventory(inventory)
    outcomes = deploy_fleet(bundle, hosts, parallel=parallel, remote_dir=remote_dir, port=port,
                            identity=str(identity) if identity else None, **ssh_options, **run_options)
    click.echo(format_table(outcomes))
    if run_bundle:
        fleet_json = write_fleet_json(outcomes, out if out is not None else Path(bundle) / "report")
        click.echo(f"merged results: {one_line(fleet_json)}")
    raise_if_failed(outcomes)


def register(group: click.Group) -> None:
    group.add_command(deploy_command)
