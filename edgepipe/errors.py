"""User-facing errors.

Anything the user can fix (a bad file, a bad option, unsupported op) is raised as `UserError`
with one line that names the file/node/tensor and says what to do. The CLI prints it without a
traceback and exits with code 2; every other exception is a bug in edgepipe: one line naming the
stage, exit code 3, the traceback only with --debug.
"""

import re

# terminal controls a model's names could carry: escape sequences (OSC 52 writes the clipboard, OSC 0
# the title, CSI erases lines), carriage return and backspace (overwrite what the line showed), C1
# controls, Unicode line/paragraph separators and bidi overrides and marks (text shown in another
# order). Only the CLI's own progress bar writes a carriage return, to the raw stream. Line feed and
# tab stay: output is made of lines.
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def inert_text(text: str) -> str:
    """`text` with every terminal control character written as its escape (`\\x1b`), so that what
    edgepipe shows of a hostile file cannot drive the terminal (or viewer) it is shown in."""
    return _TERMINAL_CONTROLS.sub(lambda found: ascii(found.group())[1:-1], text)


def one_line(text: str) -> str:
    """`inert_text` that also writes line breaks as `\\n`: a warning or a listed name stays one line, so
    a name cannot add a forged `error: ...` line below it."""
    return inert_text(str(text)).replace("\n", "\\n")


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnsupportedOpError(UserError):
    """A node the chosen target cannot run; raised before any output file is written."""

    def __init__(self, node_name: str, op_type: str, target: str, hint: str = ""):
        self.node_name, self.op_type, self.target = node_name, op_type, target
        message = f"node '{node_name}' ({op_type}) is not supported by target '{target}'"
        super().__init__(message + (f": {hint}" if hint else ""))


class BudgetError(Exception):
    """A regression or accuracy budget was broken: exit code 1 (not a usage error)."""

    exit_code = 1
