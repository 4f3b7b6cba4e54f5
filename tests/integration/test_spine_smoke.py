"""Smoke test of the fixtures: the world builds on both databases and its log verifies."""

from spe.audit.seal import seal_all
from spe.audit.verify import verify_log
from spe.db import readonly
from spe.db.session import get_engine
from spe.keys.signing import audit_public_key


def test_world_builds_and_its_log_verifies(world):
    seal_all()
    with readonly() as s:
        public = audit_public_key(s)
    report = verify_log(get_engine(), public)
    assert report.ok, report.findings
    assert report.events_verified > 20
