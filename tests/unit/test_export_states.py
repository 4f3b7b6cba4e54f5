"""The export request's state tables: every status has exactly one owner and a transition row,
final statuses lead nowhere, and every status can be reached from filing."""

from __future__ import annotations

from spe.exports.models import RequestStatus
from spe.exports.states import STATUS_OWNER, TRANSITIONS, Owner


def test_every_status_has_exactly_one_owner_and_one_transition_row():
    assert list(STATUS_OWNER) == list(RequestStatus)
    assert set(TRANSITIONS) == set(RequestStatus)


def test_final_statuses_lead_nowhere_and_are_owned_by_nobody():
    for status, owner in STATUS_OWNER.items():
        assert (owner == Owner.NOBODY) == (not TRANSITIONS[status]), status


def test_every_status_is_reachable_from_checking():
    seen, frontier = {RequestStatus.CHECKING}, [RequestStatus.CHECKING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(RequestStatus)


def test_nothing_returns_to_review_without_a_new_check():
    for status, targets in TRANSITIONS.items():
        if RequestStatus.IN_REVIEW in targets:
            assert status == RequestStatus.CHECKING
