"""The platform's terms of use: versioned texts in policies/terms/ (terms-vN.md)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from spe.config import get_settings
from spe.errors import SPEError


class TermsError(SPEError):
    pass


@dataclass(frozen=True)
class Terms:
    version: str
    title: str
    text: str
    sha256: str
    path: Path


_HEADER = re.compile(r"\A---\n(?P<head>.*?)\n---\n(?P<body>.*)\Z", re.S)


def load_terms(path: Path) -> Terms:
    raw = path.read_text(encoding="utf-8")
    match = _HEADER.match(raw)
    if not match:
        raise TermsError(f"{path} must start with a '---' header giving version and title.")
    head = dict(line.split(":", 1) for line in match.group("head").splitlines() if ":" in line)
    version = head.get("version", "").strip().strip('"')
    if not version:
        raise TermsError(f'{path}: the header needs a version line, e.g. version: "1".')
    title = head.get("title", "Terms of use").strip()
    return Terms(version, title, raw, hashlib.sha256(raw.encode()).hexdigest(), path)


def current_terms() -> Terms:
    """The newest terms of use (highest N in terms-vN.md)."""
    folder = Path(get_settings().policies_dir) / "terms"
    files = sorted(folder.glob("terms-v*.md"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not files:
        raise TermsError(f"There are no terms of use in {folder}; add terms-v1.md.")
    return load_terms(files[-1])
