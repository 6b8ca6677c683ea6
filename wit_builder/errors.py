"""The one error type for user mistakes, a URL's failure to yield an image, and a quiet
stop when the output is closed."""


class WitError(Exception):
    """A mistake the user can fix: bad flag, missing file, malformed row.

    The message names the file, row or flag and says what to do. The CLI prints it
    without a traceback and exits with status 2.
    """


class Failure(Exception):
    """A URL that yields no image: `status` is the samples.status value, str() the error
    (raised and caught inside fetch: netguard, hosts, robots)."""

    def __init__(self, status: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


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


def disk_full(e: BaseException) -> WitError | None:
    """The WitError for a full disk or quota (`ENOSPC`/`EDQUOT`, also as pyarrow words
    it), or None for any other error."""
    import errno
    if not isinstance(e, OSError):
        return None
    if e.errno not in (errno.ENOSPC, errno.EDQUOT) and "No space left" not in str(e) \
            and "Disk quota exceeded" not in str(e):
        return None
    where = f" writing {e.filename}" if e.filename else ""
    return WitError(f"the disk is full{where} ({e.strerror or e}); free some space and rerun "
                    "the same command: finished work is kept and resumes")
