"""Ingest, grants and project extracts: pseudonyms, data minimisation, quarantine, atomicity,
idempotency, and a clear error (naming the row or column) for every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from spe.audit.models import AuditEvent
from spe.catalogue.models import Dataset, DatasetVersion
from spe.db import transaction
from spe.errors import PermissionDenied
from spe.ingest.pipeline import IngestError, ingest, read_quarantine
from spe.ingest.policy import PolicyError, load_policy
from spe.ingest.store import read_version_at
from spe.storage import data_storage
from tests.conftest import synthetic_numbers, write_people_csv, write_policy


def _events(action: str) -> list[AuditEvent]:
    with transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _versions() -> list[DatasetVersion]:
    with transaction() as s:
        return list(s.scalars(select(DatasetVersion)))


# --- the good path -----------------------------------------------------------------------------


def test_ingest_pseudonymises_drops_direct_identifiers_and_writes_its_event(people):
    result = people["result"]
    assert result.created and result.accepted == 60 and result.rejected == {}
    table = read_version_at(result.path)
    assert table.column_names == ["person_id", "birth_date", "municipality", "income"]
    assert table.schema.field("person_id").type == pa.binary(16)
    raw = " ".join(people["numbers"])
    stored = data_storage().path(result.path).read_bytes()
    assert "name" not in table.column_names
    for number in people["numbers"][:5]:
        assert number.encode() not in stored  # raw identifiers are never stored
    assert raw  # (the numbers exist)
    (event,) = _events("dataset.ingest")
    details = json.loads(event.details)
    assert details["accepted"] == 60 and event.dataset == "people"


def test_same_input_is_the_same_version_and_rerun_is_byte_identical(people, tmp_path):
    again = ingest("reviewer", people["csv"], people["policy"])
    assert not again.created and again.version == people["result"].version
    with transaction() as s:
        digest = s.scalars(select(DatasetVersion)).one().data_sha256
    plain = read_version_at(people["result"].path)
    # Simulate a crash after writing but before registering: drop the version, run again.
    with transaction() as s:
        from spe.catalogue.models import Variable

        for v in s.scalars(select(Variable)):
            s.delete(v)
        for v in s.scalars(select(DatasetVersion)):
            s.delete(v)
        s.flush()
        from spe.audit import record

        record(s, "system:test", "test.reset", "dataset:people")
    rerun = ingest("reviewer", people["csv"], people["policy"])
    assert rerun.created
    # The plaintext is the same, byte for byte (the sealed bytes differ: fresh nonces).
    with transaction() as s:
        assert s.scalars(select(DatasetVersion)).one().data_sha256 == digest
    assert read_version_at(rerun.path).equals(plain)


def test_new_extract_of_same_dataset_is_a_new_version(people, tmp_path):
    more = write_people_csv(tmp_path / "people2.csv", synthetic_numbers(70))
    second = ingest("reviewer", more, people["policy"])
    assert second.created and second.version == 2
    with transaction() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "people"))
        assert [v.version for v in ds.versions] == [1, 2]


def test_only_the_holders_reviewer_may_ingest(people, tmp_path):
    more = write_people_csv(tmp_path / "p3.csv", synthetic_numbers(5, start=500))
    for who in ("researcher", "other_reviewer", "op"):
        with pytest.raises(PermissionDenied):
            ingest(who, more, people["policy"])


def test_latin1_semicolon_file_with_declared_encoding(world, tmp_path):
    numbers = synthetic_numbers(10)
    path = write_people_csv(tmp_path / "l1.csv", numbers, delimiter=";", encoding="latin-1")
    policy = load_policy(write_policy(tmp_path, "latin", encoding="latin-1"))
    result = ingest("reviewer", path, policy)
    assert result.accepted == 10
    auto = load_policy(write_policy(tmp_path, "autoenc", encoding="auto"))
    assert ingest("reviewer", path, auto).report["encoding"] == "latin-1"


def test_parquet_input_with_text_identifiers(world, tmp_path):
    numbers = synthetic_numbers(12)
    table = pa.table(
        {
            "fnr": pa.array(numbers, pa.string()),
            "name": ["x"] * 12,
            "birth_date": ["1970-01-01"] * 12,
            "municipality": ["0301"] * 12,
            "income": list(range(12)),
        }
    )
    pq.write_table(table, tmp_path / "people.parquet")
    policy = load_policy(write_policy(tmp_path, "pq"))
    result = ingest("reviewer", tmp_path / "people.parquet", policy)
    assert result.accepted == 12 and result.rejected == {}


@pytest.mark.parametrize("kind", [pa.int64(), pa.float64()])
def test_parquet_identifier_column_that_is_not_text_is_refused_not_cast(world, tmp_path, kind):
    """A number loses leading zeros: 0-padding it back could turn a 10-digit error into a
    valid-looking number, so the column is refused, not converted."""
    numbers = synthetic_numbers(12)
    table = pa.table(
        {
            "fnr": pa.array([int(n) for n in numbers]).cast(kind),
            "name": ["x"] * 12,
            "birth_date": ["1970-01-01"] * 12,
            "municipality": ["0301"] * 12,
            "income": list(range(12)),
        }
    )
    pq.write_table(table, tmp_path / "people.parquet")
    policy = load_policy(write_policy(tmp_path, "pqnum"))
    with pytest.raises(IngestError, match=r"identifier column 'fnr' as (int64|double), not text"):
        ingest("reviewer", tmp_path / "people.parquet", policy)
    _nothing_visible("pqnum")
    (event,) = _events("dataset.ingest_refused")
    assert "not text" in json.loads(event.details)["sentence"]


# --- rejected rows: quarantined with reasons, never silently dropped ----------------------------


def test_invalid_identifiers_and_duplicates_are_quarantined_with_reasons(world, tmp_path):
    numbers = synthetic_numbers(20)
    bad = [*numbers, numbers[3], "12345678901", "", "1234567890", numbers[0][:10] + "x"]
    path = write_people_csv(tmp_path / "bad.csv", bad)
    policy = load_policy(write_policy(tmp_path, "bad"))
    result = ingest("reviewer", path, policy)
    assert result.accepted == 20
    assert sum(result.rejected.values()) == 5
    assert result.rejected["duplicate_person"] == 1
    with transaction() as s:
        version = s.scalar(select(DatasetVersion))
        text = read_quarantine(s, version)
    lines = text.strip().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("22,duplicate_person,")  # header is line 1, rows from line 2
    assert any(",bad_check_digit," in line for line in lines)
    # The quarantine file on disk is sealed: no raw identifier in clear.
    blob = data_storage().path(version.quarantine_path).read_bytes()
    assert b"12345678901" not in blob


def test_identifier_history_keeps_a_person_whose_number_changed_as_one(world, tmp_path):
    import datetime as dt

    from spe.ingest.identifiers import IdKind, make_fnr

    new = synthetic_numbers(1)[0]
    d_number = None
    individual = 101
    while d_number is None:
        d_number = make_fnr(dt.date(1960, 3, 4), individual, "M", IdKind.D_NUMBER)
        individual += 2
    old_file = write_people_csv(tmp_path / "old.csv", [d_number])
    new_file = write_people_csv(tmp_path / "new.csv", [new])
    history = tmp_path / "history.csv"
    history.write_text(f"old,new\n{d_number},{new}\n")
    a = ingest("reviewer", old_file, load_policy(write_policy(tmp_path, "a")), history)
    b = ingest("reviewer", new_file, load_policy(write_policy(tmp_path, "b")))
    pa_a = read_version_at(a.path)["person_id"][0].as_py()
    pa_b = read_version_at(b.path)["person_id"][0].as_py()
    assert pa_a == pa_b


# --- bad input: one clear error, nothing visible ------------------------------------------------


def _nothing_visible(name: str) -> None:
    with transaction() as s:
        assert s.scalar(select(Dataset).where(Dataset.name == name)) is None
    root = data_storage().root
    if root.exists():
        folder = [p for p in root.rglob(name) if p.parent.name == "datasets"]
        assert not [f for d in folder for f in d.rglob("*") if f.is_file()]


@pytest.fixture
def policy(world, tmp_path):
    return load_policy(write_policy(tmp_path, "broken"))


def test_malformed_csv_line_is_named(policy, tmp_path):
    path = write_people_csv(tmp_path / "m.csv", synthetic_numbers(10))
    lines = path.read_text().splitlines()
    lines[6] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"line 7 has 6 fields where the header has 5"):
        ingest("reviewer", path, policy)
    _nothing_visible("broken")


def test_wrong_declared_encoding_is_named_with_line(world, tmp_path):
    path = write_people_csv(tmp_path / "e.csv", synthetic_numbers(10), encoding="latin-1")
    policy = load_policy(write_policy(tmp_path, "enc", encoding="utf-8"))
    with pytest.raises(IngestError, match=r"not valid UTF-8 \(first at line 2\).*latin-1"):
        ingest("reviewer", path, policy)
    utf8 = write_people_csv(tmp_path / "u.csv", synthetic_numbers(10))
    latin = load_policy(write_policy(tmp_path, "enc2", encoding="latin-1"))
    with pytest.raises(IngestError, match="looks like UTF-8"):
        ingest("reviewer", utf8, latin)


def test_missing_and_unclassified_columns_are_named(policy, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("fnr,name,birth_date,municipality,income,secret\n1,2,3,4,5,6\n")
    with pytest.raises(IngestError, match=r"column 'secret'.*does not classify"):
        ingest("reviewer", path, policy)
    path.write_text("fnr,name,birth_date,income\n1,2,3,4\n")
    with pytest.raises(IngestError, match=r"no column 'municipality'"):
        ingest("reviewer", path, policy)
    _nothing_visible("broken")


def test_empty_and_header_only_files_are_refused(policy, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="empty"):
        ingest("reviewer", empty, policy)
    header = tmp_path / "header.csv"
    header.write_text("fnr,name,birth_date,municipality,income\n")
    with pytest.raises(IngestError, match="no data rows"):
        ingest("reviewer", header, policy)


def test_a_100_megabyte_line_is_refused_with_its_line_number(policy, tmp_path):
    path = tmp_path / "long.csv"
    with open(path, "wb") as fh:
        fh.write(b"fnr,name,birth_date,municipality,income\n")
        fh.write(b"1,2,3,4,5\n")
        fh.write(b"x" * (100 * 1024 * 1024) + b"\n")
    with pytest.raises(IngestError, match=r"line 3 is longer than 1,048,576 bytes"):
        ingest("reviewer", path, policy)
    _nothing_visible("broken")


def test_policy_with_a_typo_names_file_line_and_fix(tmp_path):
    text = (write_policy(tmp_path, "typo")).read_text()
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        text.replace("{class: quasi_identifier, type: date}", "{clas: quasi_identifier}")
    )
    with pytest.raises(PolicyError, match=r"typo.yaml, line 14: .*unknown key 'clas'.*'class'"):
        load_policy(bad)
    bad.write_text(text.replace("class: attribute", "class: atribute"))
    with pytest.raises(PolicyError, match=r"line 16: .*'atribute'.*did you mean 'attribute'"):
        load_policy(bad)
    bad.write_text(text.replace("conditions: For tests.\n", "condition: For tests.\n"))
    with pytest.raises(PolicyError, match=r"unknown key 'condition'; did you mean 'conditions'"):
        load_policy(bad)
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


def test_killed_ingest_leaves_no_visible_dataset(policy, tmp_path, monkeypatch):
    from spe.ingest import pipeline

    path = write_people_csv(tmp_path / "k.csv", synthetic_numbers(30))
    calls = {"n": 0}
    real = pipeline._Batcher.process

    def dying(self, batch, first_line):
        calls["n"] += 1
        real(self, batch, first_line)
        raise KeyboardInterrupt("killed")  # as abrupt as it gets inside Python

    monkeypatch.setattr(pipeline._Batcher, "process", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest("reviewer", path, policy)
    assert calls["n"] == 1
    _nothing_visible("broken")
    leftovers = [p.name for p in data_storage().root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


# --- project extracts --------------------------------------------------------------------------


def _approve_and_grant(name: str, dataset: str, variables: list[str], gens=None) -> None:
    from spe.accounts.service import get_user
    from spe.projects.extracts import grant_dataset
    from spe.projects.service import approve_project, get_project

    with transaction() as s:
        project = get_project(s, name)
        if project.status.value == "pending":
            approve_project(s, get_user(s, "reviewer"), project)
        grant_dataset(s, get_user(s, "reviewer"), project, dataset, variables, gens or {})


def _second_project() -> None:
    import datetime as dt

    from spe.accounts.service import get_organisation, get_user
    from spe.projects.service import create_project

    with transaction() as s:
        today = dt.datetime.now(dt.UTC).date()
        create_project(
            s,
            get_user(s, "researcher2"),
            "other",
            "Other",
            "Other purpose",
            get_organisation(s, "Holder Agency"),
            get_organisation(s, "Uni A"),
            today,
            today + dt.timedelta(days=10),
        )


def test_extracts_join_within_a_project_and_not_across(people, tmp_path):
    from spe.projects.extracts import extract

    # A second dataset about the same people.
    second = ingest(
        "reviewer",
        write_people_csv(tmp_path / "again.csv", people["numbers"][:30]),
        load_policy(write_policy(tmp_path, "people_b")),
    )
    assert second.accepted == 30
    _approve_and_grant(
        "study",
        "people",
        ["income", "birth_date", "municipality"],
        {"birth_date": "year", "municipality": "county"},
    )
    _approve_and_grant("study", "people_b", ["income"])
    _second_project()
    _approve_and_grant("other", "people", ["income"])
    a = extract("study", "people")
    b = extract("study", "people_b")
    c = extract("other", "people")
    ta = pq.read_table(data_storage().path(a.path)).to_pandas()
    tb = pq.read_table(data_storage().path(b.path)).to_pandas()
    tc = pq.read_table(data_storage().path(c.path)).to_pandas()
    # Data minimisation: only granted variables, generalised as granted.
    assert list(ta.columns) == ["person_id", "income", "birth_date", "municipality"]
    assert list(tc.columns) == ["person_id", "income"]
    assert set(ta["birth_date"]) == {1970} and set(ta["municipality"]) <= {"03", "46", "50"}
    # Same project: the same 30 people join; other project: nobody does.
    assert len(set(ta["person_id"]) & set(tb["person_id"])) == 30
    assert set(ta["person_id"]).isdisjoint(set(tc["person_id"]))
    assert ta["person_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    # Idempotent: the same extract again is found, not rebuilt.
    assert not extract("study", "people").created
    assert len(_events("project.extract")) == 3


def test_closing_a_project_destroys_key_and_extracts_with_a_signed_certificate(people):
    from spe.accounts.service import get_user
    from spe.audit.canonical import canonical_json
    from spe.keys.platform import KeyStoreError
    from spe.keys.pseudonyms import project_pseudonymiser
    from spe.keys.signing import audit_public_key, verify_signature
    from spe.projects.extracts import extract
    from spe.projects.service import close_project, get_project
    from spe.workspaces.layout import host_paths
    from spe.workspaces.registry import running_workspaces, workspace_started

    _approve_and_grant("study", "people", ["income"])
    result = extract("study", "people")
    path = data_storage().path(result.path)
    assert path.exists()
    home = host_paths("study", "researcher").home
    (home / "outbox").mkdir(parents=True)
    (home / "outbox" / "table.csv").write_text("a,b\n1,2\n")
    with transaction() as s:
        workspace_started(s, get_user(s, "researcher"), get_project(s, "study"))
    with transaction() as s:
        project = get_project(s, "study")
        close_project(s, get_user(s, "reviewer"), project, "project ended")
        project_id = str(project.id)
    assert not path.exists()
    assert not home.exists()  # the workspace's home and outbox go with the project
    with transaction() as s:
        assert running_workspaces(s) == []
    with transaction() as s, pytest.raises(KeyStoreError, match="destroyed"):
        project_pseudonymiser(s, project_id)
    (event,) = _events("project.deletion_certificate")
    cert = json.loads(event.details)
    assert cert["project_key_destroyed"] is True
    assert cert["files"] and cert["files"][0]["sha256"]
    assert [f["path"] for f in cert["workspace_files"]] == [
        "study/researcher/home/outbox/table.csv"
    ]
    body = {k: v for k, v in cert.items() if k not in ("signature", "key_id")}
    with transaction() as s:
        public = audit_public_key(s)
    message = b"SPE deletion certificate v1\n" + canonical_json(body).encode()
    assert verify_signature(public, message, cert["signature"])


def test_grant_refuses_unknown_variables_and_wrong_generalisations(people):
    from spe.projects.extracts import ExtractError

    with pytest.raises(ExtractError, match="no variable 'salary'"):
        _approve_and_grant("study", "people", ["salary"])
    with pytest.raises(ExtractError, match="cannot be generalised to county"):
        _approve_and_grant("study", "people", ["income"], {"income": "county"})


def test_pseudonyms_of_different_identifier_kinds_never_collide():
    import os

    from spe.keys.pseudonyms import HolderPseudonymiser

    p = HolderPseudonymiser(os.urandom(32))
    numbers = np.array([12345678901, 12345678901], dtype=np.int64)
    out = p.pseudonyms(numbers, np.array([1, 4], dtype=np.uint8))
    assert out[0].tobytes() != out[1].tobytes()
