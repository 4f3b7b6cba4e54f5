"""`spe audit verify` catches every class of tampering an attacker with database access can do.

Each test builds a sealed log of 60 events under six signed checkpoints (one per 10 events),
then tampers with it the way such an attacker would: raw SQL through a plain database
connection, never through SPE. The CLI must exit 8 and name the first bad seq, in its message
and in its JSON. A sound log verifies; the external checkpoint file is what catches a truncated
tail; proofs for third parties check out offline and fail when their event is edited.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

TOTAL = 60
PER_SEAL = 10
TAMPERED = 8

# Each variant whose edit leaves every stored leaf hash consistent is caught only by a signed
# root, which covers a whole range: the verifier can then name no more than the start of the
# range of the first checkpoint that disagrees (the checkpoint before it still matches).


# --- the attacker's own tools: plain SQL, RFC 8785, RFC 9162 -----------------------------------


@pytest.fixture
def attacker(spe_env: dict[str, str]) -> Any:
    """A plain SQLAlchemy engine on SPE's database: no SPE session, no audit guard."""
    url = spe_env.get("SPE_DATABASE_URL") or f"sqlite:///{spe_env['SPE_STATE_DIR']}/spe.db"
    engine = create_engine(url, poolclass=NullPool)
    yield engine
    engine.dispose()


def _leaf(row: dict[str, Any]) -> bytes:
    """The RFC 9162 leaf hash of an event, computed from the published format alone."""
    obj = {
        "action": row["action"],
        "actor": row["actor"],
        "dataset": row["dataset"],
        "details": json.loads(row["details"]),
        "project": row["project"],
        "seq": row["seq"],
        "target": row["target"],
        "time": row["time"],
    }
    return hashlib.sha256(b"\x00" + rfc8785.dumps(obj)).digest()


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 Merkle tree hash, transcribed naively."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << (len(leaves) - 1).bit_length() - 1
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _event(engine: Engine, seq: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT seq, time, actor, action, target, project, dataset, details, leaf_hash "
                "FROM audit_events WHERE seq = :s"
            ),
            {"s": seq},
        ).one()
    return dict(row._mapping)


def _events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT seq, time, actor, action, target, project, dataset, details, leaf_hash "
                "FROM audit_events WHERE seq IS NOT NULL ORDER BY seq"
            )
        ).all()
    return [dict(r._mapping) for r in rows]


def _sql(engine: Engine, statement: str, *params: dict[str, Any]) -> None:
    with engine.begin() as conn:
        if params:
            for p in params:
                conn.execute(text(statement), p)
        else:
            conn.execute(text(statement))


_INSERT_EVENT = (
    "INSERT INTO audit_events (seq, time, actor, action, target, project, dataset, details, "
    "leaf_hash) VALUES (:seq, :time, :actor, :action, :target, :project, :dataset, :details, "
    ":leaf_hash)"
)


def _forged(seq: int, time: str, n: int = 0) -> dict[str, Any]:
    row = {
        "seq": seq,
        "time": time,
        "actor": "auditor",
        "action": "audit.export",
        "target": "audit-log",
        "project": None,
        "dataset": None,
        "details": rfc8785.dumps({"format": "jsonl", "n": n}).decode(),
    }
    return {**row, "leaf_hash": _leaf(row)}


def _attacker_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, hashlib.sha256(raw).hexdigest()[:16]


def _checkpoint_message(size: int, root_hex: str, time: str) -> bytes:
    # The format the checkpoint signature covers, as published in spe/audit/seal.py.
    return f"SPE audit checkpoint v1\n{size}\n{root_hex}\n{time}\n".encode()


# --- the log under test --------------------------------------------------------------------------


def _counts() -> tuple[int, int]:
    from sqlalchemy import func, select

    from spe.audit.models import AuditEvent
    from spe.db import readonly

    with readonly() as s:
        sealed = s.scalar(select(func.count()).where(AuditEvent.seq.is_not(None)))
        pending = s.scalar(select(func.count()).where(AuditEvent.seq.is_(None)))
    return int(sealed or 0), int(pending or 0)


def _record_filler(i: int) -> None:
    from spe.audit import record
    from spe.db import transaction

    with transaction() as s:
        record(
            s,
            "system:test",
            "test.filler",
            f"thing:{i}",
            {"i": i, "note": "ærlig talt — ünïcode", "nested": {"b": [1, 2], "a": None}},
            project="study",
        )


def _build_log() -> None:
    """60 sealed events, sealed 10 at a time as they arrive: checkpoints at 10, 20, ..., 60."""
    from spe.audit.seal import seal_once

    i = 0
    while True:
        sealed, pending = _counts()
        if sealed >= TOTAL:
            break
        if pending >= PER_SEAL or sealed + pending >= TOTAL:
            seal_once(batch_max=min(PER_SEAL, TOTAL - sealed))
        else:
            i += 1
            _record_filler(i)
    assert _counts() == (TOTAL, 0)


@pytest.fixture
def sealed_log(world: Any, spe_env: dict[str, str]) -> Path:
    """The world plus fillers, 60 events sealed under checkpoints 10..60; the checkpoint file."""
    _build_log()
    path = Path(spe_env["SPE_STATE_DIR"]) / "audit" / "checkpoints.jsonl"
    sizes = [json.loads(line)["tree_size"] for line in path.read_text().splitlines()]
    assert sizes == list(range(PER_SEAL, TOTAL + 1, PER_SEAL))
    return path


def _range_start(seq: int) -> int:
    """The first seq covered by the checkpoint whose range holds ``seq``."""
    return (seq - 1) // PER_SEAL * PER_SEAL + 1


def _verify(run_spe: Any, *args: str) -> tuple[Any, Any, dict[str, Any]]:
    """Run `spe audit verify` in text and in JSON mode."""
    plain = run_spe("audit", "verify", *args)
    as_json = run_spe("audit", "verify", *args, "--json")
    assert "Traceback" not in plain.stderr + as_json.stderr
    return plain, as_json, json.loads(as_json.stdout)


def assert_tampered(run_spe: Any, expected: int | set[int], *args: str) -> dict[str, Any]:
    """Verify exits 8 and names the expected first bad seq (or one of a set) on stderr and in
    JSON; returns the JSON report."""
    plain, as_json, report = _verify(run_spe, *args)
    assert plain.returncode == TAMPERED, (plain.stdout, plain.stderr)
    assert as_json.returncode == TAMPERED, (as_json.stdout, as_json.stderr)
    assert report["ok"] is False
    allowed = expected if isinstance(expected, set) else {expected}
    assert report["first_bad_seq"] in allowed, report["findings"]
    assert f"first bad seq {report['first_bad_seq']}." in plain.stderr, plain.stderr
    return report


# --- a sound log ---------------------------------------------------------------------------------


def test_sound_log_verifies_and_prints_the_count(sealed_log: Path, run_spe: Any) -> None:
    plain, as_json, report = _verify(run_spe)
    assert plain.returncode == 0, plain.stderr
    assert f"OK: {TOTAL} events and {TOTAL // PER_SEAL} signed checkpoints verified" in (
        plain.stdout
    )
    assert as_json.returncode == 0
    assert report["ok"] is True
    assert report["events_verified"] == TOTAL
    assert report["first_bad_seq"] is None
    assert report["findings"] == []

    with_file = run_spe("audit", "verify", "--checkpoints", str(sealed_log))
    assert with_file.returncode == 0, with_file.stderr
    assert f"{TOTAL // PER_SEAL} external checkpoints agree" in with_file.stdout


def test_unsealed_events_are_reported_but_do_not_fail_verification(
    sealed_log: Path, run_spe: Any
) -> None:
    for i in range(100, 103):
        _record_filler(i)
    plain, as_json, report = _verify(run_spe)
    assert plain.returncode == 0, plain.stderr
    assert f"OK: {TOTAL} events" in plain.stdout
    assert "3 events are not sealed yet" in plain.stdout
    assert as_json.returncode == 0
    assert report["ok"] is True
    assert report["unsealed"] == 3
    assert report["events_verified"] == TOTAL


def test_corrupt_checkpoint_file_is_a_one_sentence_error_naming_the_line(
    sealed_log: Path, run_spe: Any, tmp_path: Path
) -> None:
    lines = sealed_log.read_text().splitlines()
    lines.insert(2, "{this is not json")
    corrupt = tmp_path / "witness.jsonl"
    corrupt.write_text("\n".join(lines) + "\n")
    result = run_spe("audit", "verify", "--checkpoints", str(corrupt))
    assert result.returncode not in (0, TAMPERED)
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1, result.stderr
    assert "line 3" in message[0]
    assert message[0].startswith("error: ")


# --- (a) an edited event -------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["details", "actor", "time"])
def test_edited_event_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine, column: str
) -> None:
    value = {
        "details": '{"i":0,"note":"nothing to see"}',
        "actor": "someone_else",
        "time": "2020-01-01T00:00:00.000000Z",
    }[column]
    _sql(attacker, f"UPDATE audit_events SET {column} = :v WHERE seq = 17", {"v": value})
    report = assert_tampered(run_spe, 17)
    assert any(f["seq"] == 17 and "sealed hash" in f["problem"] for f in report["findings"])


def test_edited_event_is_detected_within_its_checkpoint_range(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    """The same edit with a lenient expectation, so the detection itself stays tested while
    the naming bug above is open."""
    _sql(attacker, "UPDATE audit_events SET actor = 'someone_else' WHERE seq = 17")
    report = assert_tampered(run_spe, {_range_start(17), 17})
    assert any(f["seq"] == 17 and "sealed hash" in f["problem"] for f in report["findings"])


def test_edited_event_with_recomputed_leaf_hash_is_caught_by_the_checkpoint_root(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    row = _event(attacker, 17)
    row["details"] = rfc8785.dumps({"i": 0, "note": "nothing to see"}).decode()
    _sql(
        attacker,
        "UPDATE audit_events SET details = :d, leaf_hash = :h WHERE seq = 17",
        {"d": row["details"], "h": _leaf(row)},
    )
    # Every stored leaf hash now matches its event, so only the signed root of the checkpoint at
    # 20 disagrees; the checkpoint at 10 still matches, so the verifier knows events 1..10 are
    # sound and can name no more than the range 11..20: its start (or 17, were it cleverer).
    report = assert_tampered(run_spe, {_range_start(17), 17})
    assert not any("sealed hash" in f["problem"] for f in report["findings"])
    assert any("tree size 20" in f["problem"] for f in report["findings"])


def test_checkpoints_after_an_edit_do_not_blame_ranges_of_sound_events(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    row = _event(attacker, 17)
    row["actor"] = "someone_else"
    _sql(
        attacker,
        "UPDATE audit_events SET actor = :a, leaf_hash = :h WHERE seq = 17",
        {"a": row["actor"], "h": _leaf(row)},
    )
    report = assert_tampered(run_spe, {_range_start(17), 17})
    blamed = [
        re.match(r"events (\d+)\.\.(\d+) do not match", f["problem"]) for f in report["findings"]
    ]
    ranges = [(int(m[1]), int(m[2])) for m in blamed if m]
    assert ranges
    assert all(lo <= 17 <= hi for lo, hi in ranges), ranges


# --- (b) a deleted event -------------------------------------------------------------------------


def test_deleted_event_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    _sql(attacker, "DELETE FROM audit_events WHERE seq = 23")
    report = assert_tampered(run_spe, 23)
    assert any(f["seq"] == 23 and "missing" in f["problem"] for f in report["findings"])


def test_deleted_event_is_detected_within_its_checkpoint_range(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    _sql(attacker, "DELETE FROM audit_events WHERE seq = 23")
    report = assert_tampered(run_spe, {_range_start(23), 23})
    assert any(f["seq"] == 23 and "missing" in f["problem"] for f in report["findings"])


def test_deleted_event_with_gap_closed_and_leaves_rehashed_is_caught_by_the_roots(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    # A careful attacker closes the gap and rehashes every moved event, so each stored leaf
    # hash matches its event again: only the signed roots from the checkpoint at 30 on tell.
    later = [r for r in _events(attacker) if r["seq"] > 23]
    _sql(attacker, "DELETE FROM audit_events WHERE seq = 23")
    _sql(attacker, "UPDATE audit_events SET seq = -seq WHERE seq > 23")
    _sql(
        attacker,
        "UPDATE audit_events SET seq = :seq, leaf_hash = :h WHERE seq = :old",
        *(
            {"seq": r["seq"] - 1, "h": _leaf({**r, "seq": r["seq"] - 1}), "old": -r["seq"]}
            for r in later
        ),
    )
    report = assert_tampered(run_spe, {_range_start(23), 23})
    assert not any("sealed hash" in f["problem"] for f in report["findings"])


# --- (c) an inserted event -----------------------------------------------------------------------


def test_inserted_event_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    before = _event(attacker, 29)
    _sql(attacker, "UPDATE audit_events SET seq = -seq WHERE seq >= 30")
    _sql(attacker, "UPDATE audit_events SET seq = 1 - seq WHERE seq < 0")
    _sql(attacker, _INSERT_EVENT, _forged(30, before["time"]))
    # The forged row's leaf hash is right, so the event itself looks sound: the checkpoint at
    # 30 (range 21..30) is the first that disagrees, and the verifier can name its start (the
    # shifted events from 31 on also no longer match their sealed hashes).
    report = assert_tampered(run_spe, {_range_start(30), 30})
    assert any(f["seq"] == 31 and "sealed hash" in f["problem"] for f in report["findings"])
    assert any(f["seq"] == TOTAL + 1 for f in report["findings"])


def test_event_appended_with_a_seq_but_no_checkpoint_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    last = _event(attacker, TOTAL)
    _sql(attacker, _INSERT_EVENT, _forged(TOTAL + 1, last["time"]))
    report = assert_tampered(run_spe, TOTAL + 1)
    assert any("no signed checkpoint covers" in f["problem"] for f in report["findings"])


# --- (d) reordered events ------------------------------------------------------------------------


def test_reordered_events_by_swapped_seq_are_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    _swap_seq(attacker, 33, 36)
    report = assert_tampered(run_spe, 33)
    assert {33, 36} <= {f["seq"] for f in report["findings"] if "sealed hash" in f["problem"]}


def test_reordered_events_by_swapped_seq_are_detected_within_their_checkpoint_range(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    _swap_seq(attacker, 33, 36)
    report = assert_tampered(run_spe, {_range_start(33), 33})
    assert {33, 36} <= {f["seq"] for f in report["findings"] if "sealed hash" in f["problem"]}


def _swap_seq(engine: Engine, a: int, b: int) -> None:
    _sql(engine, "UPDATE audit_events SET seq = -1 WHERE seq = :a", {"a": a})
    _sql(engine, "UPDATE audit_events SET seq = :a WHERE seq = :b", {"a": a, "b": b})
    _sql(engine, "UPDATE audit_events SET seq = :b WHERE seq = -1", {"b": b})


@pytest.mark.parametrize("rehash", [False, True], ids=["leaves-kept", "leaves-recomputed"])
def test_reordered_events_by_swapped_contents_are_detected(
    sealed_log: Path, run_spe: Any, attacker: Engine, rehash: bool
) -> None:
    a, b = _event(attacker, 33), _event(attacker, 36)
    fields = ("time", "actor", "action", "target", "project", "dataset", "details")
    for seq, src in ((33, b), (36, a)):
        row = {**{f: src[f] for f in fields}, "seq": seq}
        _sql(
            attacker,
            "UPDATE audit_events SET time = :time, actor = :actor, action = :action, "
            "target = :target, project = :project, dataset = :dataset, details = :details"
            + (", leaf_hash = :h" if rehash else "")
            + " WHERE seq = :seq",
            {**row, "h": _leaf(row)},
        )
    # With leaves kept, 33 and 36 no longer match their sealed hashes; with leaves recomputed
    # only the root of the checkpoint at 40 tells, and it covers 31..40.
    report = assert_tampered(run_spe, {_range_start(33), 33})
    leaf_findings = {f["seq"] for f in report["findings"] if "sealed hash" in f["problem"]}
    assert leaf_findings == (set() if rehash else {33, 36})


# --- (e) a truncated tail ------------------------------------------------------------------------


def test_truncated_tail_passes_without_the_external_checkpoints_and_fails_with_them(
    sealed_log: Path, run_spe: Any, attacker: Engine, tmp_path: Path
) -> None:
    witness = tmp_path / "witness.jsonl"
    shutil.copy(sealed_log, witness)
    _sql(attacker, "DELETE FROM audit_events WHERE seq > 50")
    _sql(attacker, "DELETE FROM audit_checkpoints WHERE tree_size > 50")
    # The database alone is a consistent, shorter log: this is why the checkpoint file must be
    # copied to a place the operator (and so the attacker) does not control.
    plain, _as_json, report = _verify(run_spe)
    assert plain.returncode == 0, plain.stderr
    assert "OK: 50 events" in plain.stdout
    assert report["ok"] is True

    report = assert_tampered(run_spe, 51, "--checkpoints", str(witness))
    assert any("truncated" in f["problem"] for f in report["findings"])


# --- (f) a forged or altered checkpoint ----------------------------------------------------------


def test_checkpoint_with_altered_root_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    _sql(
        attacker,
        "UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = 30",
        {"r": "ab" * 32},
    )
    report = assert_tampered(run_spe, 30)
    assert any("tree size 30 has an invalid signature" in f["problem"] for f in report["findings"])


def test_checkpoint_with_replaced_signature_is_detected_and_named(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    # A genuine signature, but over another checkpoint.
    with attacker.connect() as conn:
        other = conn.execute(
            text("SELECT signature FROM audit_checkpoints WHERE tree_size = 30")
        ).scalar_one()
    _sql(
        attacker,
        "UPDATE audit_checkpoints SET signature = :s WHERE tree_size = 40",
        {"s": other},
    )
    report = assert_tampered(run_spe, 40)
    assert any("tree size 40 has an invalid signature" in f["problem"] for f in report["findings"])


@pytest.mark.parametrize("claimed_key_id", ["attacker", "genuine"])
def test_checkpoint_signed_by_another_key_is_rejected_and_its_events_named(
    sealed_log: Path, run_spe: Any, attacker: Engine, claimed_key_id: str
) -> None:
    """Forged events appended and covered by a checkpoint the attacker signed with their own
    Ed25519 key (claiming either their key id or the genuine one)."""
    key, key_id = _attacker_key()
    if claimed_key_id == "genuine":
        with attacker.connect() as conn:
            key_id = conn.execute(
                text("SELECT key_id FROM audit_checkpoints WHERE tree_size = :n"), {"n": TOTAL}
            ).scalar_one()
    last = _event(attacker, TOTAL)
    forged = [_forged(TOTAL + n, last["time"], n) for n in range(1, 6)]
    _sql(attacker, _INSERT_EVENT, *forged)
    leaves = [bytes(r["leaf_hash"]) for r in _events(attacker)]
    size, root_hex, stamp = len(leaves), _mth(leaves).hex(), last["time"]
    with attacker.connect() as conn:
        frontier = conn.execute(
            text("SELECT frontier FROM audit_checkpoints WHERE tree_size = :n"), {"n": TOTAL}
        ).scalar_one()
    _sql(
        attacker,
        "INSERT INTO audit_checkpoints (tree_size, root_hash, time, key_id, signature, frontier) "
        "VALUES (:n, :r, :t, :k, :s, :f)",
        {
            "n": size,
            "r": root_hex,
            "t": stamp,
            "k": key_id,
            "s": key.sign(_checkpoint_message(size, root_hex, stamp)).hex(),
            "f": frontier,
        },
    )
    # The forged checkpoint vouches for nothing, so events 61..65 are sealed but uncovered.
    report = assert_tampered(run_spe, TOTAL + 1)
    assert any(
        f"tree size {size} has an invalid signature" in f["problem"] for f in report["findings"]
    )


def test_replaced_last_checkpoint_signed_by_another_key_is_detected(
    sealed_log: Path, run_spe: Any, attacker: Engine
) -> None:
    """A careful attacker edits event 57, rehashes it, and re-signs the last checkpoint with
    their own key: the genuine key then vouches only for 1..50."""
    row = _event(attacker, 57)
    row["actor"] = "someone_else"
    _sql(
        attacker,
        "UPDATE audit_events SET actor = :a, leaf_hash = :h WHERE seq = 57",
        {"a": row["actor"], "h": _leaf(row)},
    )
    key, key_id = _attacker_key()
    leaves = [bytes(r["leaf_hash"]) for r in _events(attacker)]
    root_hex = _mth(leaves).hex()
    with attacker.connect() as conn:
        stamp = conn.execute(
            text("SELECT time FROM audit_checkpoints WHERE tree_size = :n"), {"n": TOTAL}
        ).scalar_one()
    _sql(
        attacker,
        "UPDATE audit_checkpoints SET root_hash = :r, key_id = :k, signature = :s "
        "WHERE tree_size = :n",
        {
            "r": root_hex,
            "k": key_id,
            "s": key.sign(_checkpoint_message(TOTAL, root_hex, stamp)).hex(),
            "n": TOTAL,
        },
    )
    assert_tampered(run_spe, 51)
    # The genuine checkpoint in the external file disagrees with the rewritten range too.
    assert_tampered(run_spe, 51, "--checkpoints", str(sealed_log))


def test_altered_line_in_external_checkpoint_file_is_detected_and_named(
    sealed_log: Path, run_spe: Any, tmp_path: Path
) -> None:
    lines = sealed_log.read_text().splitlines()
    cp = json.loads(lines[3])
    assert cp["tree_size"] == 40
    cp["root_hash"] = "cd" * 32
    lines[3] = json.dumps(cp, sort_keys=True)
    altered = tmp_path / "witness.jsonl"
    altered.write_text("\n".join(lines) + "\n")
    report = assert_tampered(run_spe, 40, "--checkpoints", str(altered))
    assert any(
        "external checkpoint at tree size 40 has an invalid signature" in f["problem"]
        for f in report["findings"]
    )


# --- proofs for third parties --------------------------------------------------------------------


def _public_key(run_spe: Any) -> str:
    result = run_spe("audit", "public-key")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_inclusion_proof_checks_out_offline_and_fails_when_its_event_is_edited(
    sealed_log: Path, run_spe: Any, tmp_path: Path
) -> None:
    public = _public_key(run_spe)
    proved = run_spe("--as", "auditor", "audit", "prove", "17")
    assert proved.returncode == 0, proved.stderr
    proof = json.loads(proved.stdout)
    assert proof["event"]["seq"] == 17
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proved.stdout)

    ok = run_spe("audit", "check-proof", str(proof_file), "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert f"Event seq 17 is in the log of {TOTAL} events" in ok.stdout

    edited = tmp_path / "edited.json"
    proof["event"]["actor"] = "someone_else"
    edited.write_text(json.dumps(proof))
    bad = run_spe("audit", "check-proof", str(edited), "--public-key", public)
    assert bad.returncode != 0
    assert "NOT in the log" in bad.stderr
    assert "Traceback" not in bad.stderr

    key, _ = _attacker_key()
    other = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    wrong_key = run_spe("audit", "check-proof", str(proof_file), "--public-key", other)
    assert wrong_key.returncode != 0
    assert "not signed by this public key" in wrong_key.stderr


def test_consistency_proof_checks_out_against_the_signed_checkpoints(
    sealed_log: Path, run_spe: Any, tmp_path: Path
) -> None:
    from spe.audit.merkle import verify_consistency

    public = _public_key(run_spe)
    result = run_spe("--as", "auditor", "audit", "consistency", "20", "50")
    assert result.returncode == 0, result.stderr
    proof = json.loads(result.stdout)
    assert proof["kind"] == "spe-audit-consistency-proof/v1"

    # Independently: both ends are the checkpoints in the witness file, signed by the key...
    witness = {cp["tree_size"]: cp for cp in map(json.loads, sealed_log.read_text().splitlines())}
    verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    for end, size in (("old", 20), ("new", 50)):
        cp = proof[end]
        assert cp == witness[size]
        verifier.verify(
            bytes.fromhex(cp["signature"]),
            _checkpoint_message(cp["tree_size"], cp["root_hash"], cp["time"]),
        )
    # ...and the RFC 9162 proof links the two roots.
    assert verify_consistency(
        20,
        50,
        bytes.fromhex(proof["old"]["root_hash"]),
        bytes.fromhex(proof["new"]["root_hash"]),
        [bytes.fromhex(h) for h in proof["proof"]],
    )

    proof_file = tmp_path / "consistency.json"
    proof_file.write_text(result.stdout)
    ok = run_spe("audit", "check-proof", str(proof_file), "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert "The log of 50 events extends the log of 20 events" in ok.stdout

    proof["proof"][0] = "00" * 32
    proof_file.write_text(json.dumps(proof))
    bad = run_spe("audit", "check-proof", str(proof_file), "--public-key", public)
    assert bad.returncode != 0
    assert "does NOT extend" in bad.stderr
