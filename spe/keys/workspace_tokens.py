"""Pod-bound workspace tokens: Ed25519 signatures over (workspace, pod, project, expiry).

On Kubernetes a workspace reaches the airlock over the network, so its identity is a token
the control plane signs and mounts into the pod; the airlock checks signature and expiry here
and the pod's name, address and labels itself. The signing key is stored wrapped.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.errors import SPEError
from spe.keys.models import WrappedKey
from spe.keys.platform import KeyStoreError, PlatformKey, load_platform_key

WORKSPACE_TOKEN = "workspace-token"  # noqa: S105 - the key's purpose, not a secret
PREFIX = "spe1"
_DOMAIN = b"SPE workspace token v1\n"
CLAIMS = ("ws", "pod", "project", "user", "ns", "role", "iat", "exp", "jti")
# Who in the pod holds the token: the workspace container (its claims are claims), or the
# recorder sidecar (its records are the platform's own). Each is mounted in its own container.
WORKSPACE_ROLE = "workspace"
RECORDER_ROLE = "recorder"
ROLES = (WORKSPACE_ROLE, RECORDER_ROLE)
_lock = threading.Lock()
_cache: dict[tuple[str, bytes], _TokenKey] = {}


class WorkspaceTokenError(SPEError):
    """A workspace token is not valid; the message says why (never the token itself)."""

    exit_code = 6


class _TokenKey:
    __slots__ = ("__private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.__private = private
        self.public: Ed25519PublicKey = private.public_key()

    def __repr__(self) -> str:
        raw = self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"WorkspaceTokenKey(public={raw.hex()[:16]})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("signing keys cannot be pickled")

    def sign(self, message: bytes) -> bytes:
        return self.__private.sign(message)


def ensure_workspace_token_key(session: Session, platform: PlatformKey | None = None) -> bool:
    """Create the token signing key if missing; True when created (the caller audits)."""
    row = session.scalar(
        select(WrappedKey).where(WrappedKey.purpose == WORKSPACE_TOKEN, WrappedKey.scope == "")
    )
    if row is not None:
        return False
    platform = platform or load_platform_key()
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    session.add(
        WrappedKey(
            purpose=WORKSPACE_TOKEN,
            scope="",
            wrapped=platform.wrap(raw, WORKSPACE_TOKEN),
            public=public.hex(),
        )
    )
    session.flush()
    return True


def _key(session: Session, platform: PlatformKey | None) -> _TokenKey:
    row = session.scalar(
        select(WrappedKey).where(WrappedKey.purpose == WORKSPACE_TOKEN, WrappedKey.scope == "")
    )
    if row is None or row.wrapped is None:
        raise KeyStoreError("There is no workspace token key yet; start a workspace first.")
    cache_key = (str(row.id), row.wrapped)
    with _lock:
        found = _cache.get(cache_key)
    if found is None:
        platform = platform or load_platform_key(create=False)
        found = _TokenKey(
            Ed25519PrivateKey.from_private_bytes(platform.unwrap(row.wrapped, WORKSPACE_TOKEN))
        )
        with _lock:
            _cache[cache_key] = found
    return found


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(
    session: Session,
    *,
    workspace: str,
    pod: str,
    project: str,
    user: str,
    namespace: str,
    lifetime_seconds: int,
    role: str = WORKSPACE_ROLE,
    now: float | None = None,
    platform: PlatformKey | None = None,
) -> tuple[str, dict[str, Any]]:
    """A signed token for one workspace's pod (held by ``role``), and its claims (for the audit
    event)."""
    if role not in ROLES:
        raise WorkspaceTokenError(f"A workspace token is for one of {', '.join(ROLES)}.")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "ws": workspace,
        "pod": pod,
        "project": project,
        "user": user,
        "ns": namespace,
        "role": role,
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "jti": secrets.token_hex(8),
    }
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    signature = _key(session, platform).sign(_DOMAIN + payload)
    return f"{PREFIX}.{_b64(payload)}.{_b64(signature)}", claims


def verify_token(
    session: Session,
    token: str,
    *,
    now: float | None = None,
    platform: PlatformKey | None = None,
) -> dict[str, Any]:
    """The claims of a genuine, unexpired token; WorkspaceTokenError otherwise."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != PREFIX:
        raise WorkspaceTokenError("The workspace token is malformed.")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise WorkspaceTokenError("The workspace token is malformed.") from None
    try:
        _key(session, platform).public.verify(signature, _DOMAIN + payload)
    except InvalidSignature:
        raise WorkspaceTokenError("The workspace token's signature is not valid.") from None
    try:
        claims = json.loads(payload)
    except ValueError:
        raise WorkspaceTokenError("The workspace token is malformed.") from None
    if isinstance(claims, dict) and set(claims) == set(CLAIMS) - {"role"}:
        # Issued before tokens had roles (running pods keep theirs until the spawner renews it
        # at half-life): the workspace's, the role with the least.
        claims["role"] = WORKSPACE_ROLE
    if not isinstance(claims, dict) or set(claims) != set(CLAIMS):
        raise WorkspaceTokenError("The workspace token's claims are not SPE's.")
    if claims["role"] not in ROLES:
        raise WorkspaceTokenError("The workspace token's role is not SPE's.")
    if (now if now is not None else time.time()) >= claims["exp"]:
        raise WorkspaceTokenError("The workspace token has expired; restart the workspace.")
    return claims


def forget_cached_token_keys() -> None:
    with _lock:
        _cache.clear()
