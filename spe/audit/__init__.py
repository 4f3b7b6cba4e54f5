"""The tamper-evident audit log: recording, sealing into a Merkle tree, signed checkpoints,
verification, proofs and export."""

from spe.audit.log import AuditError, record, recorded_count, state_change

__all__ = ["AuditError", "record", "recorded_count", "state_change"]
