"""API keys: created with a secret shown once, stored only as a sha256 hash, compared in constant
time.

A secret looks like `gk-<id>-<43 url-safe characters>` (256 random bits). The id is public (it is
how a presented secret finds its row without scanning); the comparison that decides is
`hmac.compare_digest` on the sha256 of the whole secret. sha256 is the right hash here: the secret
has 256 bits of entropy, so a slow password hash would add latency and no security.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.safety.store import StateStore, epoch_from_iso, open_state_store

PREFIX = "gk-"
_ID_CHARS = 12  # hex characters of the public id


class AuthenticationError(GemmakitError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GemmakitError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None  # None: every model
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _new_secret() -> tuple[str, str]:
    key_id = secrets.token_hex(_ID_CHARS // 2)
    return key_id, f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def parse_expiry(value: str | None) -> float | None:
    """`2027-01-31` or an ISO date-time (UTC unless it names a zone) -> epoch seconds."""
    if value is None:
        return None
    try:
        return epoch_from_iso(value)
    except ValueError:
        raise InvalidRequestError(f"--expires: '{value}' is not a date (YYYY-MM-DD) or ISO "
                                  "date-time", param="expires") from None


def _row_to_key(row: Mapping[str, Any]) -> ApiKey:
    models = row["models"]
    return ApiKey(id=row["id"], name=row["name"], rpm=row["rpm"], tpm=row["tpm"],
                  models=tuple(models.split(",")) if models is not None else None,
                  created_at=row["created_at"], expires_at=row["expires_at"],
                  last_used_at=row["last_used_at"], revoked_at=row["revoked_at"])


class KeyStore:
    """API keys in the state store: a `StateStore` (`gemmakit.safety.store`, SQLite or
    PostgreSQL), or a data directory, meaning its SQLite file. A store passed in is shared and
    stays open on `close()`; one opened here is closed."""

    def __init__(self, store: StateStore | Path | str) -> None:
        self._owned = isinstance(store, (Path, str))
        self.store: StateStore = (open_state_store(None, store)
                                  if isinstance(store, (Path, str)) else store)
        self._touched: dict[str, float] = {}

    def close(self) -> None:
        if self._owned:
            self.store.close()

    # --- administration (the `gemmakit keys` commands) ------------------------------------
    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               models: Sequence[str] | None = None, expires_at: float | None = None
               ) -> tuple[ApiKey, str]:
        """A new key; returns it with its secret, which is never stored or shown again."""
        if not name or len(name) > 64 or not name.isprintable():
            raise InvalidRequestError("a key name is 1 to 64 printable characters", param="name")
        for flag, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and v < 1:
                raise InvalidRequestError(f"--{flag} must be at least 1", param=flag)
        model_list = [m.strip() for m in models or () if m.strip()] or None
        key_id, secret = _new_secret()
        # The database's unique index decides, so two processes creating one name cannot both win.
        if not self.store.insert_key({
                "id": key_id, "name": name, "secret_hash": hash_secret(secret), "rpm": rpm,
                "tpm": tpm, "models": ",".join(model_list) if model_list else None,
                "expires_at": expires_at, "created_at": time.time()}):
            raise InvalidRequestError(f"a key named '{name}' exists (revoke or rotate it)",
                                      param="name")
        return self._key(key_id), secret

    def rotate(self, name: str) -> tuple[ApiKey, str]:
        """Replace a key's secret (same name and limits); the old secret stops working now."""
        key_id, secret = _new_secret()
        if not self.store.replace_secret(name, key_id, hash_secret(secret)):
            raise InvalidRequestError(f"no active key named '{name}'", param="name")
        return self._key(key_id), secret

    def revoke(self, name: str) -> ApiKey:
        row = self.store.revoke_key(name, time.time())
        if row is None:
            raise InvalidRequestError(f"no active key named '{name}'", param="name")
        return _row_to_key(row)

    def get(self, name: str) -> ApiKey | None:
        row = self.store.active_key(name)
        return _row_to_key(row) if row is not None else None

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        return [_row_to_key(r) for r in self.store.list_keys(include_revoked=include_revoked)]

    def _key(self, key_id: str) -> ApiKey:
        row = self.store.key_by_id(key_id)
        assert row is not None
        return _row_to_key(row)

    # --- the request path -------------------------------------------------------------------
    def authenticate(self, secret: str | None) -> ApiKey:
        """The key a presented secret belongs to; AuthenticationError otherwise. The error never
        echoes the secret."""
        if not secret:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>' or "
                                      "'x-api-key: <key>'.")
        presented = hash_secret(secret)
        key_id = secret[len(PREFIX):len(PREFIX) + _ID_CHARS] if secret.startswith(PREFIX) else ""
        row = self.store.key_by_id(key_id) if key_id else None
        # Compare even when no row matched, so timing does not tell a known id from an unknown one.
        stored = row["secret_hash"] if row is not None else hash_secret(PREFIX)
        if not hmac.compare_digest(stored, presented) or row is None:
            raise AuthenticationError("Incorrect API key provided.")
        key = _row_to_key(row)
        if key.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.")
        if key.expired():
            raise AuthenticationError("This API key has expired.")
        return key

    def touch(self, key: ApiKey, now: float | None = None) -> None:
        """Record use; written at most once a minute per key (`keys list` shows minutes)."""
        now = now or time.time()
        if now - self._touched.get(key.id, 0.0) < 60:
            return
        self._touched[key.id] = now
        self.store.touch_key(key.id, now)

    async def admit(self, secret: str | None) -> ApiKey:
        """`authenticate` then `touch`, for the request path: in a worker thread when the store
        is across a network (a slow database must not stall the event loop), inline for the
        local file (microseconds)."""
        def check() -> ApiKey:
            key = self.authenticate(secret)
            self.touch(key)
            return key

        return await asyncio.to_thread(check) if self.store.remote else check()


def secret_from_headers(headers: Mapping[bytes, bytes]) -> str | None:
    """The presented secret: `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get(b"x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.decode("latin-1").strip()
    return None
