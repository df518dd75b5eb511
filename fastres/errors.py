"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class FastresError(Exception):
    """A problem the user can fix: bad input, missing data, a run directory in the way.

    The message names what is wrong and how to fix it; ``exit_code`` is the CLI's exit status.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(FastresError, ValueError):
    """An invalid training configuration."""


class DeviceFault(FastresError):
    """The GPU failed under a run (a failed kernel, a lost context), not the recipe: a new
    process can resume it from its last checkpoint, so `fastres ablate` retries such runs."""

    exit_code = 71  # EX_OSERR (sysexits.h): the system failed, not the request
