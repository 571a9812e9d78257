"""What the edgepipe process imports, and what it leaves behind when it is stopped.

A user runs edgepipe from a folder holding their own files; a stray `onnxsim.py` or `torch.py`
there must never be imported in place of the real package. So the current directory is dropped
from `sys.path`, and a `module:factory` model imports exactly the user's one top-level package
from the current directory, nothing else. SIGTERM is turned into an exception, so the cleanup
that runs on Ctrl-C (temp folders, half-written bundles) also runs when a CI job is cancelled.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import signal
import sys
from pathlib import Path

from edgepipe.errors import UserError


def _is_cwd(entry: str) -> bool:
    if entry in ("", "."):
        return True
    try:
        return os.path.realpath(entry) == os.path.realpath(os.getcwd())
    except OSError:
        return False


def strip_cwd_from_sys_path() -> None:
    """Drop '' and the current directory from sys.path (python -m puts it first)."""
    sys.path[:] = [entry for entry in sys.path if not _is_cwd(entry)]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally`/`except BaseException` cleanup runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def clean_up_on_sigterm() -> None:
    if hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (embedded use): leave the handler alone
            pass


def import_user_module(module_name: str):
    """Import `pkg.module` for a module:factory model: the top-level package `pkg` may come from
    the current directory (only it: its own imports of torch, onnx... resolve normally); an
    installed package of that name is used when the current directory has none."""
    top = module_name.split(".", 1)[0]
    if top not in sys.modules:
        folder = Path.cwd()
        package_init, module_file = folder / top / "__init__.py", folder / f"{top}.py"
        location = package_init if package_init.is_file() else module_file if module_file.is_file() else None
        if location is not None:
            search = [str(location.parent)] if location == package_init else None
            spec = importlib.util.spec_from_file_location(top, location, submodule_search_locations=search)
            if spec is None or spec.loader is None:
                raise UserError(f"{location}: cannot be imported as module '{top}'")
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(top, None)
                raise
    return importlib.import_module(module_name)


@contextlib.contextmanager
def native_stderr_silenced(python_too: bool = False):
    """Native libraries log to file descriptor 2, past Python's sys.stderr (and past the CLI's
    escaping of terminal controls): park it on /dev/null while one runs, so a build's terminal shows
    only edgepipe's own lines. `python_too`: also what the library prints through sys.stderr
    (onnxsim's C++ prints Python tracebacks there). Exceptions, how failures are reported, pass."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        if python_too:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        else:
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
