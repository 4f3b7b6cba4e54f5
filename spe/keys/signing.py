"""The audit signing key (Ed25519), stored wrapped by the platform key, and its recipes.

``checkpoint_signer`` signs audit checkpoints; ``verify_signature`` checks one against a
public key. The public key is derived from the unwrapped private key, never trusted from a
database column alone.
"""

from __future__ import annotations

import hashlib
import threading
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.keys.models import WrappedKey
from spe.keys.platform import KeyStoreError, PlatformKey, load_platform_key

AUDIT_SIGNING = "audit-signing"
_cache_lock = threading.Lock()
_signer_cache: dict[tuple[str, bytes], CheckpointSigner] = {}


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with the audit key. Its repr shows only the key id."""

    __slots__ = ("__private", "key_id", "public_hex")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.__private = private
        public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_hex = public_raw.hex()
        self.key_id = key_id_of(public_raw)

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("signing keys cannot be pickled")

    def sign(self, message: bytes) -> str:
        return self.__private.sign(message).hex()


def ensure_audit_signing_key(session: Session, platform: PlatformKey | None = None) -> bool:
    """Create the audit signing key if there is none; True when it was created.

    The caller records the audit event (this module knows nothing of the log).
    """
    existing = session.scalar(
        select(WrappedKey).where(WrappedKey.purpose == AUDIT_SIGNING, WrappedKey.scope == "")
    )
    if existing is not None:
        return False
    platform = platform or load_platform_key()
    private = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    session.add(
        WrappedKey(
            purpose=AUDIT_SIGNING,
            scope="",
            wrapped=platform.wrap(raw, AUDIT_SIGNING),
            public=public_raw.hex(),
        )
    )
    return True


def checkpoint_signer(session: Session, platform: PlatformKey | None = None) -> CheckpointSigner:
    """The signer for audit checkpoints (unwrapped once per process)."""
    row = session.scalar(
        select(WrappedKey).where(WrappedKey.purpose == AUDIT_SIGNING, WrappedKey.scope == "")
    )
    if row is None or row.wrapped is None:
        raise KeyStoreError("There is no audit signing key yet; run `spe db upgrade`.")
    cache_key = (str(row.id), row.wrapped)
    with _cache_lock:
        signer = _signer_cache.get(cache_key)
    if signer is None:
        platform = platform or load_platform_key(create=False)
        private = Ed25519PrivateKey.from_private_bytes(platform.unwrap(row.wrapped, AUDIT_SIGNING))
        signer = CheckpointSigner(private)
        with _cache_lock:
            _signer_cache[cache_key] = signer
    return signer


def audit_public_key(session: Session, platform: PlatformKey | None = None) -> str:
    """The audit public key (hex), derived from the private key the platform key opens."""
    return checkpoint_signer(session, platform).public_hex


def verify_signature(public_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        public.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def forget_cached_keys() -> None:
    with _cache_lock:
        _signer_cache.clear()
