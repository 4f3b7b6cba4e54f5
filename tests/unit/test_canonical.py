"""The fast canonical form of audit events is byte for byte RFC 8785, and so is what gets sealed.

Property tests hold ``canonical_json`` equal to ``rfc8785.dumps`` for arbitrary JSON values
(floats, non-ASCII and astral keys, nesting), ``event_bytes`` equal to ``rfc8785.dumps`` of
``event_object`` for arbitrary fields, and the leaf hash equal to SHA-256(0x00 || those bytes),
both as computed and as stored by the sealer in the database.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spe.audit.canonical import (
    CanonicalisationError,
    canonical_details,
    canonical_json,
    event_bytes,
    event_object,
)
from spe.audit.merkle import leaf_hash

MAX_SAFE = 2**53 - 1

# Keys whose UTF-16 order differs from their code-point order (RFC 8785 sorts by UTF-16).
TRICKY_KEYS = ["", "a", "B", "é", "\u20ac", "\ue000", "\U0001f600", "\x7f", "\n", '"', "\\"]

keys = st.text() | st.sampled_from(TRICKY_KEYS)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE, MAX_SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
optional_text = st.none() | st.text()


def reference(value: Any) -> str:
    return rfc8785.dumps(value).decode("utf-8")


@given(json_values)
@example({"\ue000": 1, "\U0001f600": 2})
@example({"b": [1.5, -0.0, 1e21, 5e-324], "a": "\x00\x1f\x7f\u2028"})
@example([MAX_SAFE, -MAX_SAFE, True, None, ""])
def test_canonical_json_equals_rfc8785_for_any_json_value(value: Any) -> None:
    assert canonical_json(value) == reference(value)


@given(st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), json_values))
def test_canonical_json_equals_rfc8785_on_the_fast_path_shapes(value: dict[str, Any]) -> None:
    assert canonical_json(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        2**53,
        -(2**53),
        {"n": [2**64]},
        float("nan"),
        {"x": float("inf")},
        "\ud800",
        {"k": "lone \udfff surrogate"},
        {"\ud800": 1},
        {1: "non-string key"},
        {"set": {1, 2}},
    ],
)
def test_values_outside_json_are_refused_not_written_differently(value: Any) -> None:
    with pytest.raises(CanonicalisationError):
        canonical_json(value)


@given(json_objects)
def test_canonical_details_is_the_canonical_json_of_the_object(details: dict[str, Any]) -> None:
    assert canonical_details(details) == reference(details)
    assert json.loads(canonical_details(details)) == json.loads(reference(details))


event_fields = {
    "seq": st.integers(1, MAX_SAFE),
    "time": st.text(),
    "actor": st.text(),
    "action": st.text(),
    "target": st.text(),
    "project": optional_text,
    "dataset": optional_text,
    "details": json_objects,
}


def _event_bytes(fields: dict[str, Any]) -> bytes:
    return event_bytes(**{**fields, "details": canonical_json(fields["details"])})


@given(st.fixed_dictionaries(event_fields))
@example(
    {
        "seq": 1,
        "time": "2026-11-23T03:14:44.123456Z",
        "actor": 'quote " and \\ backslash',
        "action": "user.create",
        "target": "\u2028\x00\U0001f600",
        "project": None,
        "dataset": "",
        "details": {"\U0001f600": 1.5, "\ue000": [None]},
    }
)
def test_event_bytes_equal_rfc8785_of_the_event_object(fields: dict[str, Any]) -> None:
    assert _event_bytes(fields) == rfc8785.dumps(event_object(**fields))


@given(st.fixed_dictionaries(event_fields))
def test_leaf_hash_is_sha256_of_zero_byte_and_rfc8785_event(fields: dict[str, Any]) -> None:
    expected = hashlib.sha256(b"\x00" + rfc8785.dumps(event_object(**fields))).digest()
    assert leaf_hash(_event_bytes(fields)) == expected


# What a database stores: no NUL in text (PostgreSQL refuses it), bounded column widths.
db_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
db_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE, MAX_SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | db_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(db_text, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    actor=db_text,
    target=db_text,
    project=st.none() | db_text,
    dataset=st.none() | db_text,
    details=st.dictionaries(db_text | st.sampled_from(TRICKY_KEYS[:-3]), db_values, max_size=5),
)
def test_sealed_leaf_hash_in_the_database_is_sha256_of_zero_byte_and_rfc8785_event(
    spe_env: Any,
    actor: str,
    target: str,
    project: str | None,
    dataset: str | None,
    details: dict[str, Any],
) -> None:
    from sqlalchemy import select

    from spe.audit import record
    from spe.audit.models import AuditEvent
    from spe.audit.seal import seal_all
    from spe.db import readonly, transaction

    with transaction() as s:
        record(
            s,
            actor or "system:x",
            "test.canonical",
            target,
            details,
            project=project,
            dataset=dataset,
        )
    seal_all()
    e = AuditEvent
    with readonly() as s:
        seq, time, stored = s.execute(
            select(e.seq, e.time, e.leaf_hash).order_by(e.seq.desc()).limit(1)
        ).one()
    assert seq is not None and stored is not None
    obj = event_object(
        seq, time, actor or "system:x", "test.canonical", target, project, dataset, details
    )
    assert bytes(stored) == hashlib.sha256(b"\x00" + rfc8785.dumps(obj)).digest()
