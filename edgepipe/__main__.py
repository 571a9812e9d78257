"""`python -m edgepipe`: the current directory is first on sys.path here, so drop it before the
CLI imports click, numpy or torch (a stray click.py or torch.py there must never run)."""

from edgepipe.isolation import strip_cwd_from_sys_path

strip_cwd_from_sys_path()

from edgepipe.cli.main import main  # noqa: E402

main()
