"""The project state tables cover every status exactly once, and closed is final."""

from spe.projects.models import ProjectStatus
from spe.projects.states import STATUS_OWNER, TRANSITIONS


def test_every_status_has_exactly_one_owner():
    assert set(STATUS_OWNER) == set(ProjectStatus)
    assert len(STATUS_OWNER) == len(ProjectStatus)


def test_every_status_has_its_transitions_and_only_known_targets():
    assert set(TRANSITIONS) == set(ProjectStatus)
    for targets in TRANSITIONS.values():
        assert targets <= set(ProjectStatus)


def test_closed_is_final_and_every_other_status_can_close():
    assert TRANSITIONS[ProjectStatus.CLOSED] == frozenset()
    for status in ProjectStatus:
        if status != ProjectStatus.CLOSED:
            assert ProjectStatus.CLOSED in TRANSITIONS[status]
