"""Keys and the recipes that use them: the only place in SPE that touches cryptographic primitives.

Everyone else calls recipes (``wrap``/``unwrap``, ``checkpoint_signer``, ``hash_password``);
key material never appears in logs, reprs or exceptions.
"""

from spe.keys.platform import KeyStoreError, PlatformKey, load_platform_key
from spe.keys.signing import (
    CheckpointSigner,
    audit_public_key,
    checkpoint_signer,
    ensure_audit_signing_key,
    verify_signature,
)

__all__ = [
    "CheckpointSigner",
    "KeyStoreError",
    "PlatformKey",
    "audit_public_key",
    "checkpoint_signer",
    "ensure_audit_signing_key",
    "load_platform_key",
    "verify_signature",
]
