"""Sealing small secrets that SPE must read back (a person's TOTP secret): AES-256-GCM under the
platform key, bound to a context that names the secret's purpose and owner, so a sealed value
copied to another row or purpose does not open.
"""

from __future__ import annotations

from spe.keys.platform import load_platform_key


def seal_secret(secret: bytes, context: str) -> bytes:
    """``secret`` sealed for storage in the database; ``context`` must be given to open it."""
    return load_platform_key().wrap(secret, context)


def open_secret(sealed: bytes, context: str) -> bytes:
    """The secret ``seal_secret`` sealed under ``context`` (KeyStoreError when it does not open)."""
    return load_platform_key().unwrap(sealed, context)
