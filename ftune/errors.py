"""The errors ftune reports to people.

`UsageError` is bad usage or bad input (exit code 2): its message is one line that names what is wrong
and what to do. Anything else that escapes a command is a failure (exit code 1).
"""


class UsageError(Exception):
    """Bad usage or bad input; the message is shown as `error: <message>` and ftune exits with 2."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message from a library is folded so scripts can grep it.
        super().__init__(" ".join(str(message).split()))


class RunFailed(Exception):
    """A run that failed for a reason ftune can name (e.g. the loss diverged): one line, exit code 1."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
