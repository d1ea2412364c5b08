"""User-facing errors.

A `RadprivError` is a mistake in the user's input or environment (a missing file, a bad
column, an impossible privacy setting). The CLI prints its message as one line and exits
with status 2; it never dumps a traceback for these. Messages name the file and the line or
column where that applies, and say what to do.
"""


class RadprivError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class DataError(RadprivError):
    """The data cannot be read or cannot be trained on."""


class ConfigError(RadprivError):
    """A configuration value is invalid or inconsistent."""


class PrivacyError(RadprivError):
    """A privacy setting is impossible, or a privacy check failed."""


class ModelError(RadprivError):
    """The encoder or a logged model cannot be resolved or loaded."""


class RequestError(RadprivError, ValueError):
    """A scoring request the served model refuses (too many rows, a report too long, no text).

    Its message names rows and limits, never a report's text: requests carry patient data, and
    the scoring server returns the message to the caller (HTTP 400).
    """
