"""User-facing errors.

Anything the user can fix (a bad file, a bad option, unsupported op) is raised as `UserError`
with one line that names the file/node/tensor and says what to do. The CLI prints it without a
traceback and exits with code 2; every other exception is a bug in edgepipe: one line naming the
stage, exit code 3, the traceback only with --debug.
"""


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
