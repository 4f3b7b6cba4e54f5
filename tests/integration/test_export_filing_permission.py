"""Who may file an export request for a project: its members who may use its data, told why
otherwise (a stranger, a member still waiting for the data holder). Both forms of the question
(spe.exports.permissions) against a real database; SQLite only, the rule reads no SQL of its own.
"""

from __future__ import annotations

import pytest

from spe.accounts.service import accept_terms, get_user
from spe.db import transaction
from spe.errors import PermissionDenied
from spe.exports import permissions as perms
from spe.projects.service import add_member, approve_project, get_project


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_only_a_member_who_may_use_the_data_files_and_the_others_are_told_why(world):
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        for name in ("researcher", "researcher2", "researcher_b"):
            accept_terms(s, get_user(s, name))
    with transaction() as s:  # added after approval: waits for the data holder
        add_member(
            s, get_user(s, "researcher"), get_project(s, "study"), get_user(s, "researcher2")
        )
    with transaction() as s:
        study = get_project(s, "study")
        member, pending, stranger = (
            get_user(s, n) for n in ("researcher", "researcher2", "researcher_b")
        )
        assert perms.file_refusal(s, member, study) is None
        assert perms.user_can_file(s, member, study) is True
        perms.check_user_can_file(s, member, study)
        outsider = "You are not a member of project study; ask its lead to add you."
        assert perms.file_refusal(s, stranger, study) == outsider
        assert perms.user_can_file(s, stranger, study) is False
        with pytest.raises(PermissionDenied) as refused:
            perms.check_user_can_file(s, stranger, study)
        assert refused.value.message == outsider
        waiting = perms.file_refusal(s, pending, study)
        assert waiting is not None and "waiting for approval by Holder Agency" in waiting
        assert perms.user_can_file(s, pending, study) is False


def test_terms_accepted_by_someone_else_or_in_an_older_version_do_not_count(world):
    from spe.accounts.models import TermsAcceptance
    from spe.accounts.permissions import terms_accepted

    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher2"))  # another person, the current version
        s.add(
            TermsAcceptance(
                user_id=get_user(s, "researcher").id, version="0-old", text_sha256="0" * 64
            )
        )
    with transaction() as s:
        member = get_user(s, "researcher")
        assert terms_accepted(s, get_user(s, "researcher2")) is True
        assert terms_accepted(s, member) is False
        assert perms.file_refusal(s, member, get_project(s, "study")) == (
            "Accept the current terms of use first (`spe terms accept`)."
        )
