"""The project's named exceptions. Every error mailpipe raises on purpose is one of these."""

from __future__ import annotations


class MailpipeError(Exception):
    """Base of every error raised on purpose by mailpipe."""


class ConfigError(MailpipeError):
    """Settings are missing or contradict each other."""


class BadInputError(MailpipeError):
    """The user handed us something unusable (missing file, not an mbox, ...). Nothing was written."""


class ParseError(MailpipeError):
    """One message could not be understood at all; it is recorded as a failure and skipped."""


class RunConflictError(MailpipeError):
    """Another run is active for the same account."""


class StageError(MailpipeError):
    """A stage failed for a whole window; the window is marked failed with this reason."""
