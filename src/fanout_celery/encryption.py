"""Encryption at rest: step outputs, function outputs and ``event.data["encrypted"]``.

Uses Fernet (AES-128-CBC with HMAC-SHA256) from the ``cryptography`` package
(``pip install fanout_celery[encryption]``). Keys rotate: the first key encrypts, every
key decrypts, so a new key goes first and old ones stay as ``fallback_keys`` until no
stored data needs them. Redis then holds ciphertext only; handlers see plain values.

Step outputs are stored as ``{"__fanout_encrypted__": "<token>"}``. Only the
``encrypted`` field of event data is encrypted, so routing, ``match`` paths and keys can
still use the rest of the event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import ConfigurationError
from .model.middleware import Middleware

MARK = "__fanout_encrypted__"


class DecryptionError(ConfigurationError):
    """Stored data could not be decrypted with any configured key. A configuration
    problem (the key that encrypted it was removed), so the run fails without retries."""


class EncryptionMiddleware(Middleware):
    """Encrypts what fanout stores in Redis; see the module docstring."""

    def __init__(self, key: str | bytes, fallback_keys: Sequence[str | bytes] = ()) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "EncryptionMiddleware needs the cryptography package: "
                "pip install fanout_celery[encryption]") from None
        try:
            self._fernet = MultiFernet([Fernet(k) for k in [key, *fallback_keys]])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid encryption key ({exc}); make one with "
                "cryptography.fernet.Fernet.generate_key()") from None

    @staticmethod
    def generate_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()

    def encrypt(self, value: Any) -> dict[str, str]:
        token = self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode())
        return {MARK: token.decode()}

    def decrypt(self, value: Any) -> Any:
        if not _sealed(value):
            return value
        from cryptography.fernet import InvalidToken

        try:
            return json.loads(self._fernet.decrypt(value[MARK].encode()))
        except InvalidToken:
            raise DecryptionError("stored data cannot be decrypted with the configured "
                                  "keys (was the key that encrypted it removed?)") from None

    # -- hooks -----------------------------------------------------------------------
    def transform_output(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        return value if _sealed(value) else self.encrypt(value)

    def transform_input(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        if _sealed(value):
            return self.decrypt(value)
        if isinstance(value, dict) and isinstance(value.get("data"), dict) \
                and _sealed(value["data"].get("encrypted")):
            # An event: the trigger, or one returned by wait_for_event.
            return {**value, "data": {**value["data"],
                                      "encrypted": self.decrypt(value["data"]["encrypted"])}}
        return value

    def before_send_events(self, ctx: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for event in events:
            data = event.get("data") or {}
            if "encrypted" in data and not _sealed(data["encrypted"]):
                event = {**event, "data": {**data, "encrypted": self.encrypt(data["encrypted"])}}
            out.append(event)
        return out


def _sealed(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(MARK), str)
