"""The platform key: 32 random bytes that wrap (AES-256-GCM) every other key SPE keeps.

It comes from ``SPE_PLATFORM_KEY`` (base64, e.g. a Kubernetes secret) or from a file with mode
0600 that is created on first run. It is never stored in the database.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spe.config import Settings, get_settings
from spe.errors import SPEError

_WRAP_VERSION = b"\x01"
_NONCE = 12


class KeyStoreError(SPEError):
    """A key is missing, unreadable or does not open what it should."""

    exit_code = 6


class PlatformKey:
    """Holds the platform key; wraps and unwraps other keys. Its repr shows nothing secret."""

    __slots__ = ("__key", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyStoreError(
                "The platform key must be exactly 32 bytes (44 characters of base64)."
            )
        self.__key = AESGCM(raw)
        # An identifier that says which key is in use without revealing it.
        self.key_id = _key_fingerprint(raw)

    def __repr__(self) -> str:
        return f"PlatformKey(id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("the platform key cannot be pickled")

    def wrap(self, secret: bytes, context: str) -> bytes:
        """Seal ``secret`` for storage; ``context`` (purpose and scope) is bound to it."""
        nonce = os.urandom(_NONCE)
        return _WRAP_VERSION + nonce + self.__key.encrypt(nonce, secret, context.encode())

    def unwrap(self, blob: bytes, context: str) -> bytes:
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _WRAP_VERSION:
            raise KeyStoreError(f"The stored key for {context} is malformed.")
        nonce = blob[1 : 1 + _NONCE]
        try:
            return self.__key.decrypt(nonce, blob[1 + _NONCE :], context.encode())
        except InvalidTag:
            raise KeyStoreError(
                f"The stored key for {context} does not open with this platform key; "
                "check SPE_PLATFORM_KEY or SPE_PLATFORM_KEY_FILE points at the right key."
            ) from None


def _key_fingerprint(raw: bytes) -> str:
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"spe-key-id\x00" + raw)
    return digest.finalize().hex()[:16]


def _decode(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyStoreError(f"The platform key in {where} is not valid base64.") from None
    if len(raw) != 32:
        raise KeyStoreError(
            f"The platform key in {where} must decode to 32 bytes; generate one with "
            "`python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`."
        )
    return raw


def load_platform_key(settings: Settings | None = None, create: bool = True) -> PlatformKey:
    """The platform key from the environment or its file (created 0600 on first run)."""
    settings = settings or get_settings()
    if settings.platform_key is not None and settings.platform_key.get_secret_value():
        return PlatformKey(_decode(settings.platform_key.get_secret_value(), "SPE_PLATFORM_KEY"))
    path = Path(settings.platform_key_file or settings.state_dir / "keys" / "platform.key")
    if not path.exists():
        if not create:
            raise KeyStoreError(f"There is no platform key at {path}; run `spe db upgrade` first.")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        raw = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(raw).decode() + "\n")
        return PlatformKey(raw)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyStoreError(
            f"The platform key file {path} is open to other users (mode {mode:o}); "
            f"run `chmod 600 {path}`."
        )
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyStoreError(f"Cannot read the platform key file {path}: {exc.strerror}.") from None
    return PlatformKey(_decode(text, str(path)))
