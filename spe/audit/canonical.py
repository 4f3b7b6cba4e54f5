"""The canonical form of an audit event: RFC 8785 JSON, built fast.

The reference is ``rfc8785.dumps`` of the event object; the fast paths below produce the same
bytes for the shapes SPE writes (a property test holds them equal) and fall back to the
reference for anything else (floats, non-ASCII keys).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


class CanonicalisationError(ValueError):
    pass


def _simple(value: Any) -> bool:
    """True when json.dumps(sort_keys) output equals RFC 8785 for this value."""
    t = type(value)
    if t is str or value is None or t is bool:
        return True
    if t is int:
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if t is dict:
        return all(type(k) is str and k.isascii() and _simple(v) for k, v in value.items())
    if t is list or t is tuple:
        return all(_simple(v) for v in value)
    return False


def canonical_json(value: Any) -> str:
    """RFC 8785 canonical JSON text of ``value``."""
    if _simple(value):
        text = _dumps(value)
    else:
        try:
            return rfc8785.dumps(value).decode("utf-8")
        except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
            raise CanonicalisationError(f"cannot be written as canonical JSON: {exc}") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalisationError("contains text that is not valid Unicode") from None
    return text


def canonical_details(details: Mapping[str, Any] | None) -> str:
    if details is None:
        return "{}"
    if type(details) is dict:
        return canonical_json(details)
    if not isinstance(details, Mapping):
        raise CanonicalisationError("audit details must be a JSON object")
    return canonical_json(dict(details))


def _opt(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def event_bytes(
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    project: str | None,
    dataset: str | None,
    details: str,
) -> bytes:
    """The canonical bytes of one sealed event (``details`` already canonical JSON text)."""
    return (
        f'{{"action":{encode_basestring(action)},"actor":{encode_basestring(actor)},'
        f'"dataset":{_opt(dataset)},"details":{details},"project":{_opt(project)},'
        f'"seq":{seq},"target":{encode_basestring(target)},"time":{encode_basestring(time)}}}'
    ).encode()


def event_object(
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    project: str | None,
    dataset: str | None,
    details: Mapping[str, Any],
) -> dict[str, Any]:
    """The event as a JSON object: what ``event_bytes`` serialises (the reference form)."""
    return {
        "action": action,
        "actor": actor,
        "dataset": dataset,
        "details": dict(details),
        "project": project,
        "seq": seq,
        "target": target,
        "time": time,
    }
