"""Password hashing (Argon2id; older scrypt hashes still verify and are upgraded at the next
login), the digest of MFA recovery codes, and one-time password generation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's Password Storage Cheat Sheet, Argon2id: 19 MiB of memory, 2 passes, 1 lane.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)
# Checked when a login names no account (or is refused before its password is checked), so
# that the answer takes as long as a real check: an Argon2id hash with the current parameters
# of a random password nobody knows (a test proves it costs what a real hash costs).
DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$8vvrF1iX6WiSB3CLaDxvOg$"
    "GJCy+JSIdGGGv5L2Wy4SeISvPZKGWTlg7nXnNMfETMU"
)
_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789"
_RECOVERY_SCHEME = "hmac-sha256$1$"


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (PHC string format: scheme, parameters, salt, hash)."""
    return _HASHER.hash(password)


def scheme_of(stored: str | None) -> str:
    """The hashing scheme of a stored hash ("argon2id", "scrypt", ...; "" when none)."""
    if not stored:
        return ""
    if stored.startswith("$"):
        return stored.split("$")[1]
    return stored.split("$")[0]


def verify_password(password: str, stored: str | None) -> bool:
    """Does ``password`` match ``stored`` (Argon2id, or an older scrypt hash)?"""
    if not stored:
        return False
    if stored.startswith("$argon2"):
        try:
            return _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return _verify_scrypt(password, stored)


def needs_rehash(stored: str | None) -> bool:
    """Is ``stored`` of an older scheme or weaker parameters than hash_password makes now (a
    login that just verified the password replaces it, in the login's transaction)?"""
    if not stored or not stored.startswith("$argon2id$"):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


def burn_check(password: str) -> None:
    """Spend what checking a password costs, with no account to check it against."""
    verify_password(password, DUMMY_HASH)


def _verify_scrypt(password: str, stored: str) -> bool:
    # The scheme before Argon2id: scrypt$N$r$p$salt$digest (base64).
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def recovery_code_digest(key: bytes, owner: str, code: str) -> str:
    """The stored form of an MFA recovery code: HMAC-SHA256 under a key of the account's (its
    sealed TOTP secret, never in the database in the clear) bound to ``owner``. A recovery code
    is 59 random bits, so no slow hash is needed to protect it; the key makes the digests
    useless to whoever reads only the database, and a check costs microseconds, not one
    password hash per code left."""
    derived = hmac.new(key, b"spe mfa recovery code key v1", hashlib.sha256).digest()
    mac = hmac.new(derived, f"{owner}\x00{code}".encode(), hashlib.sha256).hexdigest()
    return _RECOVERY_SCHEME + mac


def is_recovery_digest(stored: str) -> bool:
    return stored.startswith(_RECOVERY_SCHEME)


def recovery_code_matches(key: bytes, owner: str, code: str, stored: str) -> bool:
    """Does ``code`` match ``stored`` (a recovery_code_digest, or an older password hash)?"""
    if is_recovery_digest(stored):
        return hmac.compare_digest(recovery_code_digest(key, owner, code), stored)
    return verify_password(code, stored)


def new_password(length: int = 16) -> str:
    """A random password without look-alike characters, for one-time demo and reset logins."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
