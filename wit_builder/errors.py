"""The one error type for user mistakes, and a quiet stop when the output is closed."""


class WitError(Exception):
    """A mistake the user can fix: bad flag, missing file, malformed row.

    The message names the file, row or flag and says what to do. The CLI prints it
    without a traceback and exits with status 2.
    """


def output_closed() -> int:
    """The reader of our output went away (`wit-build sql ... | head`): stop quietly,
    as Unix tools do, and return the shell's status for SIGPIPE."""
    import os
    import sys
    try:  # later writes (and the flush at exit) go nowhere instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141
