"""Password hashing recipes (spe.keys.passwords): Argon2id with OWASP's parameters, older
scrypt hashes verified and marked for upgrade, the timing dummy of the current scheme, and
the keyed digest of MFA recovery codes."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time

from spe.keys import passwords


def _scrypt(password: str) -> str:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def test_new_hashes_are_argon2id_with_owasps_parameters_and_verify() -> None:
    stored = passwords.hash_password("plum kettle orbit")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password("plum kettle orbit", stored)
    assert not passwords.verify_password("plum kettle orbi", stored)
    assert not passwords.needs_rehash(stored)
    assert passwords.hash_password("plum kettle orbit") != stored  # salted


def test_an_scrypt_hash_still_verifies_and_needs_an_upgrade() -> None:
    stored = _scrypt("plum kettle orbit")
    assert passwords.verify_password("plum kettle orbit", stored)
    assert not passwords.verify_password("wrong", stored)
    assert passwords.needs_rehash(stored) and passwords.scheme_of(stored) == "scrypt"


def test_weaker_argon2_parameters_need_an_upgrade() -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("x")
    assert passwords.verify_password("x", weak) and passwords.needs_rehash(weak)


def test_malformed_or_missing_hashes_verify_nothing() -> None:
    for stored in (None, "", "scrypt$x", "$argon2id$v=19$garbage", "bcrypt$1$2$3$4$5"):
        assert not passwords.verify_password("x", stored)
        assert passwords.needs_rehash(stored)


def test_the_timing_dummy_is_of_the_current_scheme_and_costs_a_real_check() -> None:
    """An unknown username must cost what a known one costs: the dummy has today's
    parameters (a cheaper dummy would tell usernames apart)."""
    assert passwords.DUMMY_HASH.startswith("$argon2id$") and not passwords.needs_rehash(
        passwords.DUMMY_HASH
    )
    real = passwords.hash_password("some password")

    def median_ms(call: object) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            call()  # type: ignore[operator]
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    dummy = median_ms(lambda: passwords.burn_check("a guess"))
    checked = median_ms(lambda: passwords.verify_password("a guess", real))
    assert 0.5 < dummy / checked < 2, (dummy, checked)


def test_a_recovery_code_digest_is_keyed_and_bound_to_its_account() -> None:
    key = b"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    stored = passwords.recovery_code_digest(key, "user-1", "abcdefghjkmn")
    assert stored.startswith("hmac-sha256$1$") and "abcdefghjkmn" not in stored
    assert passwords.recovery_code_matches(key, "user-1", "abcdefghjkmn", stored)
    assert not passwords.recovery_code_matches(key, "user-1", "abcdefghjkmp", stored)
    assert not passwords.recovery_code_matches(key, "user-2", "abcdefghjkmn", stored)
    assert not passwords.recovery_code_matches(b"another key", "user-1", "abcdefghjkmn", stored)
    legacy = passwords.hash_password("abcdefghjkmn")  # codes made before the digests
    assert passwords.recovery_code_matches(key, "user-1", "abcdefghjkmn", legacy)
