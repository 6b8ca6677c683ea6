"""The one error type for user mistakes."""


class WitError(Exception):
    """A mistake the user can fix: bad flag, missing file, malformed row.

    The message names the file, row or flag and says what to do. The CLI prints it
    without a traceback and exits with status 2.
    """
