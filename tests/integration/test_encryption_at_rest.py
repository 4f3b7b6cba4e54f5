"""Encryption at rest (issue 16, point 7): a data holder's dataset versions and quarantine files
are sealed on disk with the version's own key, a tampered file is refused, a withdrawn version is
crypto-shredded with a signed certificate, and extraction gives what it gave before.

The attacker here stands on the storage: they read and alter the bytes of the data directory.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import select

from spe.audit.models import AuditEvent
from spe.catalogue.models import DatasetVersion
from spe.db import transaction
from spe.ingest.pipeline import IngestError, ingest, read_quarantine
from spe.ingest.policy import load_policy
from spe.ingest.store import DatasetUnreadable, open_data, read_table
from spe.keys.datasets import MAGIC, DatasetCipher, open_dataset_stream, seal_dataset_stream
from spe.keys.platform import KeyStoreError
from spe.storage import data_storage
from tests.conftest import synthetic_numbers, write_people_csv, write_policy

KNOWN_INCOME = 987_654_321  # a value no other column or header holds


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only: the point is the files, not the database."""
    return str(request.param)


@pytest.fixture
def sealed(world, tmp_path):
    """'people' ingested with one rejected row (a duplicate) and one known income."""
    numbers = synthetic_numbers(40)
    path = write_people_csv(tmp_path / "people.csv", [*numbers, numbers[7]])
    text = path.read_text().replace(",39000\n", f",{KNOWN_INCOME}\n")  # row 40's income
    path.write_text(text)
    policy = load_policy(write_policy(tmp_path))
    result = ingest("reviewer", path, policy)
    assert result.accepted == 40 and result.rejected == {"duplicate_person": 1}
    return {"numbers": numbers, "csv": path, "policy": policy, "result": result}


def _version() -> DatasetVersion:
    with transaction() as s:
        return s.scalars(select(DatasetVersion)).one()


def _plain_data() -> bytes:
    with transaction() as s:
        reader = open_data(s, s.scalars(select(DatasetVersion)).one())
    with reader:
        return reader.readall()


def _extract(project: str = "study"):
    from spe.accounts.service import get_user
    from spe.projects.extracts import extract, grant_dataset
    from spe.projects.service import approve_project, get_project

    with transaction() as s:
        p = get_project(s, project)
        if p.status.value == "pending":
            approve_project(s, get_user(s, "reviewer"), p)
        grant_dataset(s, get_user(s, "reviewer"), p, "people", ["income", "municipality"], {})
    return extract(project, "people")


def test_files_at_rest_hold_no_plaintext_of_a_known_identifier_pseudonym_or_income(sealed):
    version = _version()
    storage = data_storage()
    data = storage.path(version.path).read_bytes()
    quarantine = storage.path(version.quarantine_path).read_bytes()
    plain = _plain_data()
    with transaction() as s:
        table = read_table(s, s.scalars(select(DatasetVersion)).one())
        rejected = read_quarantine(s, s.scalars(select(DatasetVersion)).one())
    pseudonym = table["person_id"][0].as_py()
    income = struct.pack("<q", KNOWN_INCOME)
    identifier = sealed["numbers"][7].encode()
    # The needles are in the plaintext (so their absence on disk means something) ...
    assert pseudonym in plain and income in plain
    assert identifier in rejected.encode() and "Ødegård".encode() in rejected.encode()
    assert KNOWN_INCOME in table["income"].to_pylist()
    # ... and nowhere in the bytes at rest.
    for blob in (data, quarantine):
        assert blob.startswith(MAGIC)
        for needle in (pseudonym, income, identifier, str(KNOWN_INCOME).encode(), b"PAR1"):
            assert needle not in blob
        assert "Ødegård".encode() not in blob
    assert version.encryption == "aes-256-gcm-chunked-v1"


def test_nothing_plain_is_left_in_the_data_directory_after_ingest(sealed):
    root = data_storage().root
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"data.parquet", "quarantine.sealed"}
    assert not [p for p in root.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    for path in files:
        assert path.read_bytes().startswith(MAGIC), path
        assert path.stat().st_mode & 0o077 == 0 or path.parent.stat().st_mode & 0o077 == 0


def test_the_same_input_is_the_same_version_with_the_same_plaintext_hash(sealed):
    from spe.storage import sha256_file

    first = _version()
    again = ingest("reviewer", sealed["csv"], sealed["policy"])
    assert not again.created and again.version == first.version
    import hashlib

    assert hashlib.sha256(_plain_data()).hexdigest() == first.data_sha256
    assert sha256_file(data_storage().path(first.path)) != first.data_sha256  # sealed bytes


def test_one_altered_byte_is_refused_with_a_sentence(sealed):
    from spe.projects.extracts import extract

    version = _version()
    path = data_storage().path(version.path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(KeyStoreError, match=r"does not open: chunk \d+ was altered"):
        _extract()
    path.write_bytes(bytes(blob[: len(blob) - 5]))  # cut short
    with pytest.raises(KeyStoreError, match="does not open"):
        extract("study", "people")
    q = data_storage().path(version.quarantine_path)
    qblob = bytearray(q.read_bytes())
    qblob[-3] ^= 0x80
    q.write_bytes(bytes(qblob))
    with transaction() as s, pytest.raises(KeyStoreError, match="does not open"):
        read_quarantine(s, s.scalars(select(DatasetVersion)).one())


def test_sealed_chunks_cannot_be_reordered_dropped_appended_or_moved(tmp_path):
    """The recipe itself, with 64-byte chunks so a small file has many."""
    import os

    cipher = DatasetCipher(os.urandom(32))
    payload = bytes(range(256)) * 3
    path = tmp_path / "f.sealed"
    with open(path, "wb") as sink, seal_dataset_stream(cipher, sink, "ctx:data", chunk=64) as w:
        for start in range(0, len(payload), 50):
            w.write(payload[start : start + 50])
    with open_dataset_stream(cipher, path, "ctx:data") as r:
        assert r.readall() == payload
        r.seek(130)
        assert r.read(10) == payload[130:140]
    blob = path.read_bytes()
    header, frame = 28, 4 + 12 + 64 + 16
    chunks = [blob[header + i * frame : header + (i + 1) * frame] for i in range(12)]
    variants = {
        "reordered": blob[:header] + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "last dropped": blob[:header] + b"".join(chunks[:11]),
        "appended": blob + chunks[3],
    }
    for what, bad in variants.items():
        path.write_bytes(bad)
        with (
            pytest.raises(KeyStoreError, match="does not open"),
            open_dataset_stream(cipher, path, "ctx:data") as r,
        ):
            r.readall()
        assert what
    path.write_bytes(blob)
    with pytest.raises(KeyStoreError, match="does not open"):  # another file's context
        open_dataset_stream(cipher, path, "ctx:quarantine")
    with pytest.raises(KeyStoreError, match="does not open"):  # another version's key
        open_dataset_stream(DatasetCipher(os.urandom(32)), path, "ctx:data")
    assert repr(cipher) == "DatasetCipher()"
    # Writes of any size, across chunk boundaries, exact multiples and nothing at all.
    for pieces in ([], [b"x" * 192], [b"a" * 10, b"b" * 300, b"c" * 3], [b"d" * 64] * 3):
        with open(path, "wb") as sink, seal_dataset_stream(cipher, sink, "c", chunk=64) as w:
            for piece in pieces:
                w.write(piece)
        with open_dataset_stream(cipher, path, "c") as r:
            assert r.readall() == b"".join(pieces)
        assert w.size == len(b"".join(pieces))


def test_extraction_gives_the_extract_the_plain_version_would(sealed):
    """The extract is the project pseudonym of each holder pseudonym with the granted columns,
    computed here independently from the decrypted version."""
    from spe.keys.pseudonyms import project_pseudonymiser
    from spe.projects.service import get_project

    result = _extract()
    extract_table = pa.parquet.read_table(data_storage().path(result.path))
    with transaction() as s:
        version_table = read_table(s, s.scalars(select(DatasetVersion)).one())
        pseudonymiser = project_pseudonymiser(s, str(get_project(s, "study").id))
    blocks = np.frombuffer(
        b"".join(version_table["person_id"].to_pylist()), dtype=np.uint8
    ).reshape(-1, 16)
    expected = [h.decode() for h in pseudonymiser.pseudonyms(blocks)]
    assert extract_table.column_names == ["person_id", "income", "municipality"]
    assert extract_table["person_id"].to_pylist() == expected
    assert extract_table["income"].to_pylist() == version_table["income"].to_pylist()
    assert extract_table["municipality"].to_pylist() == version_table["municipality"].to_pylist()
    # Extracts mounted into workspaces are plain files (on storage the operator encrypts).
    assert data_storage().path(result.path).read_bytes().startswith(b"PAR1")


def _spe(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The `spe` command run in this process through its own entry point (the same error
    handling as a shell, without a second's interpreter start-up)."""
    from spe.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_withdrawn_version_cannot_be_read_and_its_certificate_verifies(sealed, capsys):
    from spe.catalogue.service import verify_withdrawal_certificate
    from spe.keys.datasets import dataset_cipher
    from spe.keys.signing import audit_public_key

    version = _version()
    # Another holder's reviewer and a researcher are refused, and the refusal is logged.
    for who in ("other_reviewer", "researcher"):
        code, said = _spe(
            capsys, "--as", who, "dataset", "withdraw", "people", "1", "--reason", "x"
        )
        assert code != 0 and "Traceback" not in said and "internal error" not in said
    with transaction() as s:
        refused = s.scalars(select(AuditEvent).where(AuditEvent.action == "request.refused"))
        assert len(list(refused)) == 2
    code, said = _spe(
        capsys,
        "--as",
        "reviewer",
        "dataset",
        "withdraw",
        "people",
        "1",
        "--reason",
        "consent withdrawn",
    )
    assert code == 0, said
    assert "data key is destroyed" in said
    storage = data_storage()
    assert not storage.path(version.path).exists()
    assert not storage.path(version.quarantine_path).exists()
    with transaction() as s:
        again = s.scalars(select(DatasetVersion)).one()
        with pytest.raises(DatasetUnreadable, match=r"was withdrawn on .* can no longer be read"):
            read_table(s, again)
        with pytest.raises(DatasetUnreadable, match="withdrawn"):
            read_quarantine(s, again)
        with pytest.raises(KeyStoreError, match="destroyed"):
            dataset_cipher(s, again.ingest_key)
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset.withdraw"))
        public = audit_public_key(s)
    cert = json.loads(event.details)
    assert cert["data_key_destroyed"] is True and cert["reason"] == "consent withdrawn"
    assert sorted(f["path"].rsplit("/", 1)[1] for f in cert["files"]) == [
        "data.parquet",
        "quarantine.sealed",
    ]
    assert verify_withdrawal_certificate(cert, public)
    assert not verify_withdrawal_certificate({**cert, "data_key_destroyed": False}, public)
    # Nothing is left to extract, and the same input does not bring the version back.
    from spe.projects.extracts import ExtractError

    with pytest.raises(ExtractError, match="withdrawn"):
        _extract()
    with pytest.raises(IngestError, match="withdrawn"):
        ingest("reviewer", sealed["csv"], sealed["policy"])
    code, said = _spe(
        capsys, "--as", "reviewer", "dataset", "withdraw", "people", "1", "--reason", "again"
    )
    assert code != 0 and "already withdrawn" in said


def test_a_plain_version_from_before_encryption_is_refused_with_what_to_do(sealed):
    with transaction() as s:
        version = s.scalars(select(DatasetVersion)).one()
        version.encryption = None  # as migration 0011 leaves a version written before it
        from spe.audit import record

        record(s, "system:test", "test.plain", "dataset:people")
    with transaction() as s, pytest.raises(DatasetUnreadable, match="ingest its extract again"):
        read_table(s, s.scalars(select(DatasetVersion)).one())
