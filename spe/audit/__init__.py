"""The tamper-evident audit log: recording, sealing into a Merkle tree, signed checkpoints,
verification, proofs and export."""

from spe.audit.log import AuditError, record, recorded_count, state_change
from spe.audit.refusals import record_refusal

__all__ = ["AuditError", "record", "record_refusal", "recorded_count", "state_change"]
