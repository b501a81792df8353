"""OAuth grants for Gmail: obtained once in a browser, stored encrypted, turned into google-auth credentials.

A refresh token is a long-lived password to the mailbox, so it only ever touches the database
encrypted with MAILPIPE_SECRET_KEY (Fernet). Several keys, newest first, make rotation possible:
prepend a new key, re-encrypt stored values with `rotate`, then drop the old key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from pipeline.errors import BadInputError, ConfigError, MailpipeError
from pipeline.settings import Settings

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

GMAIL_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/gmail.readonly",)
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
_WHERE_TO_GET_ONE = (
    "download one from Google Cloud console → APIs & Services → Credentials → Create credentials → "
    "OAuth client ID → Desktop app"
)
_KEY_HINT = "set MAILPIPE_SECRET_KEY, e.g. to the output of `mailpipe accounts keygen`"


class CredentialsError(MailpipeError):
    """Stored credentials cannot be opened or used, or Google did not hand out a usable grant."""


@dataclass(frozen=True)
class OAuthGrant:
    """What it takes to mint access tokens for one mailbox without asking the user again."""

    # Kept out of repr: grants end up in logs and tracebacks.
    refresh_token: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)
    token_uri: str = DEFAULT_TOKEN_URI
    scopes: tuple[str, ...] = GMAIL_SCOPES

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "scopes": list(self.scopes)}, sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> OAuthGrant:
        try:
            raw = json.loads(data)
            scopes = raw.get("scopes") or GMAIL_SCOPES
            return cls(
                refresh_token=str(raw["refresh_token"]),
                client_id=str(raw["client_id"]),
                client_secret=str(raw["client_secret"]),
                token_uri=str(raw.get("token_uri") or DEFAULT_TOKEN_URI),
                # OAuth itself writes scopes as one space-separated string.
                scopes=tuple(scopes.split() if isinstance(scopes, str) else scopes),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CredentialsError(f"stored OAuth grant is malformed ({type(exc).__name__}: {exc})") from None


def new_key() -> str:
    """A fresh Fernet key, for MAILPIPE_SECRET_KEY."""
    return Fernet.generate_key().decode("ascii")


class TokenCipher:
    """Encrypts grants with the first key; decrypts with any of them."""

    def __init__(self, keys: str) -> None:
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise ConfigError(f"MAILPIPE_SECRET_KEY is empty: {_KEY_HINT}")
        self._fernet = MultiFernet([_fernet(part, number) for number, part in enumerate(parts, 1)])

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCipher:
        if not settings.secret_key or not settings.secret_key.strip():
            raise ConfigError(f"Gmail credentials are stored encrypted and no key is configured: {_KEY_HINT}")
        return cls(settings.secret_key)

    def encrypt(self, grant: OAuthGrant) -> bytes:
        return self._fernet.encrypt(grant.to_json().encode("utf-8"))

    def decrypt(self, blob: bytes) -> OAuthGrant:
        try:
            plain = self._fernet.decrypt(blob)
        except InvalidToken:
            raise _key_mismatch() from None
        return OAuthGrant.from_json(plain)

    def rotate(self, blob: bytes) -> bytes:
        """The same grant re-encrypted under the newest key."""
        try:
            return self._fernet.rotate(blob)
        except InvalidToken:
            raise _key_mismatch() from None


def _fernet(key: str, number: int) -> Fernet:
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        # The key itself is never echoed: it is a secret.
        raise ConfigError(
            f"MAILPIPE_SECRET_KEY key #{number} is not a Fernet key (32 url-safe base64-encoded bytes); "
            "make one with `mailpipe accounts keygen`"
        ) from None


def _key_mismatch() -> CredentialsError:
    return CredentialsError(
        "stored Gmail credentials cannot be decrypted: MAILPIPE_SECRET_KEY does not match the key they were "
        "encrypted with (keep the old key after the new one until every account is rotated), "
        "or re-authorize the account"
    )


# ---------------------------------------------------------------- getting a grant


def authorize_installed_app(
    client_secrets: Path, *, scopes: tuple[str, ...] = GMAIL_SCOPES, open_browser: bool = True, port: int = 0
) -> OAuthGrant:
    """Run Google's consent flow in a browser and return the offline grant it yields."""
    client = read_client_secrets(client_secrets)
    from google_auth_oauthlib.flow import InstalledAppFlow

    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(client_secrets), scopes=list(scopes))
    except ValueError as exc:
        raise BadInputError(f"{client_secrets}: not an OAuth client file ({exc}); {_WHERE_TO_GET_ONE}") from None
    # offline + consent: Google only returns a refresh token on a fresh consent for offline access.
    creds = flow.run_local_server(port=port, open_browser=open_browser, access_type="offline", prompt="consent")
    if not creds.refresh_token:
        raise CredentialsError(
            "Google returned no refresh token, so mailpipe could not sync without you; revoke mailpipe's access "
            "at https://myaccount.google.com/permissions and authorize again"
        )
    return OAuthGrant(
        refresh_token=creds.refresh_token,
        client_id=str(client["client_id"]),
        client_secret=str(client["client_secret"]),
        token_uri=str(client.get("token_uri") or DEFAULT_TOKEN_URI),
        scopes=tuple(creds.scopes or scopes),
    )


def read_client_secrets(path: Path) -> dict[str, Any]:
    """The "installed" (or "web") section of a client-secrets file; BadInputError when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such client-secrets file; {_WHERE_TO_GET_ONE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read client-secrets file ({exc}); {_WHERE_TO_GET_ONE}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise BadInputError(f"{path}: client-secrets file is not JSON; {_WHERE_TO_GET_ONE}") from None
    section = next((data[k] for k in ("installed", "web") if isinstance(data, dict) and k in data), None)
    if not isinstance(section, dict):
        raise BadInputError(f'{path}: not an OAuth client file (no "installed" or "web" section); {_WHERE_TO_GET_ONE}')
    missing = [k for k in ("client_id", "client_secret") if not section.get(k)]
    if missing:
        raise BadInputError(f"{path}: OAuth client file lacks {', '.join(missing)}; {_WHERE_TO_GET_ONE}")
    return section


def credentials_for(grant: OAuthGrant) -> Credentials:
    """google-auth credentials with no access token yet: the first call refreshes one."""
    from google.oauth2.credentials import Credentials

    return Credentials(
        token=None,
        refresh_token=grant.refresh_token,
        token_uri=grant.token_uri,
        client_id=grant.client_id,
        client_secret=grant.client_secret,
        scopes=list(grant.scopes),
    )
