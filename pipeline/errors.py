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


class AuthError(MailpipeError):
    """Missing, malformed, expired, replayed or unknown credentials (the web API answers 401)."""


class NotFoundError(MailpipeError):
    """Nothing by that name or id that the caller may see: another tenant's looks exactly the same."""


class TooLargeError(BadInputError):
    """A request body over the configured limit (413)."""


class NotSyncableError(MailpipeError):
    """The account has no source to sync from (an mbox-only account): import its mailbox instead (409)."""


class AccountPausedError(MailpipeError):
    """The account's Gmail quota is paused by a rate limit; try again after `retry_after` seconds (429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
