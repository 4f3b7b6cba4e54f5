"""Pseudonyms and per-scope keys: holder keys, project keys, the holder's person space.

A pseudonym is AES-256 applied to one 16-byte block (a keyed pseudorandom permutation):
- holder level: block = scheme version | identifier kind | zeros | identifier (8 bytes, big
  endian), so identifiers of different kinds or schemes can never map to the same pseudonym;
- project level: the holder-level pseudonym (16 bytes) encrypted again with the project's key,
  so the same person joins across one project's datasets and is unlinkable across projects.
AES on single distinct blocks is deterministic encryption: injective (no collisions at all, unlike
a truncated hash) and vectorised by one cipher call over a whole batch. With the key, a holder
pseudonym can be inverted, but so could any keyed hash of an 11-digit identifier by enumerating
the ~26 M plausible numbers; what protects people is that the key never leaves the key store.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.db.base import utcnow
from spe.keys.models import WrappedKey
from spe.keys.platform import KeyStoreError, PlatformKey, load_platform_key

SCHEME_VERSION = 1
HOLDER_PSEUDONYM = "holder-pseudonym"
PROJECT_PSEUDONYM = "project-pseudonym"
# The disclosure audit's holder-wide person space: never shown, never in a workspace, and kept
# when a project's key is destroyed (released cells stay audited).
PERSON_SPACE = "person-space"

_HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


class _AESBlock:
    """One AES key used as a block permutation; its repr shows nothing."""

    __slots__ = ("__cipher",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyStoreError("A pseudonym key must be 32 bytes.")
        self.__cipher = Cipher(algorithms.AES(raw), modes.ECB())  # noqa: S305 - single blocks

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> NoReturn:
        raise TypeError("keys cannot be pickled")

    def permute(self, blocks: np.ndarray) -> np.ndarray:
        """Encrypt an (N, 16) uint8 array of blocks; returns (N, 16) uint8."""
        if blocks.ndim != 2 or blocks.shape[1] != 16 or blocks.dtype != np.uint8:
            raise ValueError("expected an (N, 16) uint8 array")
        return self._encrypt(np.ascontiguousarray(blocks))

    def _encrypt(self, blocks: np.ndarray) -> np.ndarray:
        encryptor = self.__cipher.encryptor()
        out = encryptor.update(blocks.reshape(-1).data) + encryptor.finalize()
        return np.frombuffer(out, dtype=np.uint8).reshape(-1, 16)


# The holder-level block: version and kind in the first two bytes, then six zero bytes (the
# head as one little-endian word), then the identifier as a big-endian word.
_HOLDER_BLOCK = np.dtype([("head", "<u8"), ("identifier", ">u8")])


class HolderPseudonymiser(_AESBlock):
    """Identifiers (int64 with a kind code) to holder-level pseudonyms (16 bytes each)."""

    def pseudonyms(self, identifiers: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        blocks = np.empty(len(identifiers), dtype=_HOLDER_BLOCK)
        blocks["head"] = (kinds.astype(np.uint64) & np.uint64(0xFF)) << np.uint64(8)
        blocks["head"] |= np.uint64(SCHEME_VERSION)
        blocks["identifier"] = identifiers
        return self._encrypt(blocks.view(np.uint8))


class ProjectPseudonymiser(_AESBlock):
    """Holder-level pseudonyms to this project's pseudonyms (32 lower-case hex characters)."""

    def pseudonyms(self, holder_pseudonyms: np.ndarray) -> np.ndarray:
        return to_hex(self.permute(holder_pseudonyms))


class PersonSpace(_AESBlock):
    """Holder-level pseudonyms to the holder's audit person space: one 64-bit key per person,
    the same in every project of the holder, linkable to nothing without this key."""

    def keys(self, holder_pseudonyms: np.ndarray) -> np.ndarray:
        """(N, 16) uint8 holder-level pseudonyms → (N,) int64 person-space keys."""
        return np.ascontiguousarray(self.permute(holder_pseudonyms)[:, :8]).view("<i8").ravel()


def to_hex(blocks: np.ndarray) -> np.ndarray:
    """(N, 16) uint8 → numpy 'S32' array of lower-case hex."""
    return _HEX[blocks].view("S32").ravel()


def _row(session: Session, purpose: str, scope: str) -> WrappedKey | None:
    return session.scalar(
        select(WrappedKey).where(WrappedKey.purpose == purpose, WrappedKey.scope == scope)
    )


def ensure_scope_key(
    session: Session, purpose: str, scope: str, platform: PlatformKey | None = None
) -> bool:
    """Create the key for (purpose, scope) if missing; True when created. Callers audit."""
    row = _row(session, purpose, scope)
    if row is not None:
        if row.destroyed_at is not None:
            raise KeyStoreError(f"The {purpose} key of {scope} was destroyed; it cannot return.")
        return False
    platform = platform or load_platform_key()
    session.add(
        WrappedKey(
            purpose=purpose,
            scope=scope,
            wrapped=platform.wrap(os.urandom(32), f"{purpose}:{scope}"),
        )
    )
    session.flush()
    return True


def _raw(session: Session, purpose: str, scope: str, platform: PlatformKey | None) -> bytes:
    row = _row(session, purpose, scope)
    if row is None:
        raise KeyStoreError(f"There is no {purpose} key for {scope}.")
    if row.wrapped is None or row.destroyed_at is not None:
        raise KeyStoreError(
            f"The {purpose} key for {scope} was destroyed on {row.destroyed_at:%Y-%m-%d}; "
            "its data can no longer be read or extended."
        )
    platform = platform or load_platform_key(create=False)
    return platform.unwrap(row.wrapped, f"{purpose}:{scope}")


def holder_pseudonymiser(
    session: Session, holder_id: str, platform: PlatformKey | None = None
) -> HolderPseudonymiser:
    return HolderPseudonymiser(_raw(session, HOLDER_PSEUDONYM, holder_id, platform))


def project_pseudonymiser(
    session: Session, project_id: str, platform: PlatformKey | None = None
) -> ProjectPseudonymiser:
    return ProjectPseudonymiser(_raw(session, PROJECT_PSEUDONYM, project_id, platform))


def person_space(
    session: Session, holder_id: str, platform: PlatformKey | None = None
) -> PersonSpace:
    return PersonSpace(_raw(session, PERSON_SPACE, holder_id, platform))


def destroy_scope_key(session: Session, purpose: str, scope: str) -> bool:
    """Crypto-shred: drop the wrapped key for good. Returns False if there was none. Callers
    audit."""
    row = _row(session, purpose, scope)
    if row is None or row.wrapped is None:
        return False
    row.wrapped = None
    row.destroyed_at = utcnow()
    session.flush()
    return True
