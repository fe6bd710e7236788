"""The one exception type users see for bad input.

Raised before any work starts, with a one-line message that names the bad value. The CLI prints
it as ``sdo: error: <message>`` and exits with status 2 instead of showing a traceback.
"""


class UsageError(ValueError):
    """Bad input: an unknown name, a value out of range, a shape that does not fit."""
