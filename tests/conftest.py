"""Shared pytest fixtures. `ssh_server` starts a real OpenSSH server on 127.0.0.1 (tests/ssh_server.py)."""

from tests.ssh_server import ssh_server  # noqa: F401  (fixture registration)
