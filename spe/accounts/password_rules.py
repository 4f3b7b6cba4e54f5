"""The rules a chosen password must meet (from settings): long enough, not the username, not
one of the commonly leaked passwords bundled in common_passwords.txt.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from spe.errors import SPEError

COMMON_FILE = Path(__file__).resolve().parent / "common_passwords.txt"
_TAIL = re.compile(r"[\d\W_]+$")


class PasswordRejected(SPEError):
    """A chosen password breaks a rule; the message says which."""


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(
        line.strip().casefold() for line in lines if line.strip() and not line.startswith("#")
    )


def _forms(password: str) -> set[str]:
    """The password as compared: folded, and without trailing digits and punctuation."""
    folded = password.strip().casefold()
    return {folded, _TAIL.sub("", folded), folded.replace(" ", "")}


def password_problem(password: str, username: str, min_length: int) -> str | None:
    """Why ``password`` may not be chosen by ``username`` (None when it may)."""
    if len(password) < min_length:
        return f"Choose a password of at least {min_length} characters."
    if len(password) > 1024:
        return "Choose a password of at most 1024 characters."
    if password != password.strip():
        return "A password may not start or end with a space."
    folded = password.casefold()
    if username and username.casefold() in folded:
        return "A password may not contain your username; choose another."
    if len(set(folded)) < 4:
        return "That password repeats too few characters; choose another."
    if _forms(password) & common_passwords():
        return "That password is on the list of commonly used passwords; choose another."
    return None


def check_password(password: str, username: str, min_length: int | None = None) -> None:
    """Raise PasswordRejected with the rule it breaks, unless ``password`` may be chosen."""
    if min_length is None:
        from spe.config import get_settings

        min_length = get_settings().password_min_length
    problem = password_problem(password, username, min_length)
    if problem is not None:
        raise PasswordRejected(problem)
