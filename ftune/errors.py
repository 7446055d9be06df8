"""The errors ftune reports to people.

`UsageError` is bad usage or bad input (exit code 2): its message is one line that names what is wrong
and what to do. `RunInterrupted` is a command stopped by a signal (exit code 130, 143 or 138). Anything else
that escapes a command is a failure (exit code 1).
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


# The exit codes of a command stopped by a signal (the spec's; 128 + the signal's number on Linux).
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 138}


class RunInterrupted(KeyboardInterrupt):
    """A command stopped by SIGINT, SIGTERM or SIGUSR1 (ftune.signals): one line naming --resume, exit code 130,
    143 or 138. A KeyboardInterrupt, so that code which lets Ctrl-C through lets it through too."""

    def __init__(self, signum: int, where: str = "", resume_from: str = "the last checkpoint"):
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = SIGNAL_EXIT_CODES.get(self.signal_name, 128 + signum)
        super().__init__(f"stopped by {self.signal_name}{where}; rerun the same command with --resume to continue "
                         f"from {resume_from}")
