"""OAuth grants: encryption at rest, key rotation, client-secrets validation, google-auth credentials."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline import credentials
from pipeline.credentials import (
    GMAIL_SCOPES,
    CredentialsError,
    OAuthGrant,
    TokenCipher,
    authorize_installed_app,
    credentials_for,
    new_key,
)
from pipeline.errors import BadInputError, ConfigError
from pipeline.settings import Settings

GRANT = OAuthGrant(refresh_token="1//refresh-secret", client_id="123.apps.googleusercontent.com",
                   client_secret="GOCSPX-secret")
CLIENT: dict[str, dict[str, Any]] = {
    "installed": {
        "client_id": "123.apps.googleusercontent.com",
        "client_secret": "GOCSPX-secret",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.example.test/token",
        "redirect_uris": ["http://localhost"],
    }
}


def test_grant_json_round_trip_and_repr_hides_secrets() -> None:
    assert OAuthGrant.from_json(GRANT.to_json()) == GRANT
    assert GRANT.scopes == GMAIL_SCOPES and GRANT.token_uri == "https://oauth2.googleapis.com/token"
    assert "secret" not in repr(GRANT)
    with pytest.raises(CredentialsError):
        OAuthGrant.from_json('{"client_id": "x"}')


def test_encrypt_decrypt_round_trip() -> None:
    cipher = TokenCipher(new_key())
    blob = cipher.encrypt(GRANT)
    assert b"refresh-secret" not in blob
    assert cipher.decrypt(blob) == GRANT


def test_rotation() -> None:
    old, new = new_key(), new_key()
    old_blob = TokenCipher(old).encrypt(GRANT)
    both = TokenCipher(f"{new}, {old}")
    assert both.decrypt(old_blob) == GRANT
    rotated = both.rotate(old_blob)
    assert TokenCipher(new).decrypt(rotated) == GRANT
    with pytest.raises(CredentialsError):
        TokenCipher(old).decrypt(rotated)
    # New values are written under the newest key.
    assert TokenCipher(new).decrypt(both.encrypt(GRANT)) == GRANT


def test_wrong_key_is_a_credentials_error() -> None:
    blob = TokenCipher(new_key()).encrypt(GRANT)
    with pytest.raises(CredentialsError, match="does not match") as info:
        TokenCipher(new_key()).decrypt(blob)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(CredentialsError, match="does not match"):
        TokenCipher(new_key()).rotate(blob)
    with pytest.raises(CredentialsError):
        TokenCipher(new_key()).decrypt(b"not a token")


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_key_says_what_to_do(value: str | None) -> None:
    settings = Settings(_env_file=None, secret_key=value)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="MAILPIPE_SECRET_KEY") as info:
        TokenCipher.from_settings(settings)
    assert "mailpipe accounts keygen" in str(info.value)


@pytest.mark.parametrize("keys", ["not-a-key", f"{new_key()},short", "é" * 44])
def test_malformed_key_is_a_config_error(keys: str) -> None:
    with pytest.raises(ConfigError, match="MAILPIPE_SECRET_KEY") as info:
        TokenCipher(keys)
    assert "short" not in str(info.value)  # the key is a secret: never echoed


def test_from_settings_uses_the_configured_key() -> None:
    key = new_key()
    blob = TokenCipher(key).encrypt(GRANT)
    cipher = TokenCipher.from_settings(Settings(_env_file=None, secret_key=key))  # type: ignore[call-arg]
    assert cipher.decrypt(blob) == GRANT


# ---------------------------------------------------------------- client secrets and the consent flow


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "client_secret.json"
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such"),
        ("{not json", "not JSON"),
        ('["installed"]', '"installed" or "web"'),
        ('{"other": {}}', '"installed" or "web"'),
        ('{"installed": {"client_id": "x"}}', "client_secret"),
    ],
)
def test_bad_client_secrets(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "missing.json" if content is None else _write(tmp_path, content)
    with pytest.raises(BadInputError, match=match) as info:
        authorize_installed_app(path, open_browser=False)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "Desktop app" in message


def test_unreadable_client_secrets(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read"):
        authorize_installed_app(tmp_path, open_browser=False)  # a folder


class _FakeFlow:
    """Stands in for InstalledAppFlow so no browser or server runs."""

    refresh_token: str | None = "1//fresh"
    calls: list[dict[str, Any]] = []

    @classmethod
    def from_client_secrets_file(cls, path: str, scopes: list[str]) -> _FakeFlow:
        cls.calls.append({"path": path, "scopes": scopes})
        return cls()

    def run_local_server(self, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(kwargs)
        return SimpleNamespace(refresh_token=self.refresh_token, scopes=list(GMAIL_SCOPES))


@pytest.fixture
def fake_flow(monkeypatch: pytest.MonkeyPatch) -> type[_FakeFlow]:
    import google_auth_oauthlib.flow

    _FakeFlow.calls = []
    _FakeFlow.refresh_token = "1//fresh"
    monkeypatch.setattr(google_auth_oauthlib.flow, "InstalledAppFlow", _FakeFlow)
    return _FakeFlow


def test_authorize_returns_the_offline_grant(tmp_path: Path, fake_flow: type[_FakeFlow]) -> None:
    grant = authorize_installed_app(_write(tmp_path, json.dumps(CLIENT)), open_browser=False, port=8765)
    assert grant == OAuthGrant("1//fresh", CLIENT["installed"]["client_id"], CLIENT["installed"]["client_secret"],
                               "https://oauth2.example.test/token", GMAIL_SCOPES)
    assert fake_flow.calls[1] == {"port": 8765, "open_browser": False, "access_type": "offline", "prompt": "consent"}


def test_authorize_without_refresh_token(tmp_path: Path, fake_flow: type[_FakeFlow]) -> None:
    fake_flow.refresh_token = None
    with pytest.raises(credentials.CredentialsError, match="no refresh token"):
        authorize_installed_app(_write(tmp_path, json.dumps(CLIENT)), open_browser=False)


def test_credentials_for() -> None:
    grant = OAuthGrant("1//r", "cid", "csecret", token_uri="https://oauth2.example.test/token")
    creds = credentials_for(grant)
    assert creds.token is None and not creds.valid
    assert creds.refresh_token == "1//r"
    assert creds.client_id == "cid" and creds.client_secret == "csecret"
    assert creds.token_uri == "https://oauth2.example.test/token"
    assert tuple(creds.scopes or ()) == GMAIL_SCOPES
