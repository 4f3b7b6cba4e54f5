"""First-run set-up shared by `spe db upgrade`, `spe init` and the demo: the platform's keys."""

from __future__ import annotations

from spe.audit import record
from spe.db import transaction
from spe.keys.platform import load_platform_key
from spe.keys.signing import ensure_audit_signing_key


def ensure_keys() -> bool:
    """Create the platform key (file) and the audit signing key (wrapped) if missing."""
    platform = load_platform_key(create=True)
    with transaction() as session:
        created = ensure_audit_signing_key(session, platform)
        if created:
            record(
                session,
                "system:setup",
                "key.create",
                "key:audit-signing",
                {"platform_key_id": platform.key_id},
            )
    return created
