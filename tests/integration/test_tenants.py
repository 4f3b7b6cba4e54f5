"""Two tenants in every permission test: two data holders and two institutions, every role
against its own tenant's and the other tenant's projects, export requests, datasets, logs and
budgets, through the API and the pages (FastAPI's TestClient over the real application and a
real SQLite database; one platform per module, many cheap requests).

Tenant A: data holder "Holder Agency", institution "Uni A", project ``study``, datasets
``people`` (rows) and ``health`` (aggregate-only). Tenant B: "Other Agency", "Uni B", project
``beta``, datasets ``census`` and ``vitals``. Actors are named by their relation to the tenant
whose objects are asked for (AUTHOR, PEER, REVIEWER, ...), so one table states both directions.

Every refused cell asserts the status, the exact refusal sentence and that the refusal was
written to the audit log (one more refusal counted for the actor: an event, or the minute's
tally that becomes a summary event). tests/integration/test_route_inventory.py reads ROUTES to
prove that every route of the application has a refusal cell here or is explicitly public.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import (
    World,
    _clear_spe_env,
    _reset_spe,
    synthetic_numbers,
    write_people_csv,
    write_policy,
)
from tests.integration.dp_world import HEALTH_POLICY, policies_folder, write_health_csv
from tests.integration.test_exports import png_bytes

API = "/api/v1"
PAGES = "/services/spe"
PASSWORD = "correct horse battery"

# Actors, by their relation to the tenant whose objects are asked for.
AUTHOR = "author"  # the project's lead; filed the tenant's export requests
PEER = "peer"  # a researcher of the same institution, not a member of the project
REVIEWER = "reviewer"  # a reviewer of the project's data holder
REVIEWER2 = "reviewer2"  # the holder's second reviewer
OTHER_RESEARCHER = "other_researcher"  # the other tenant's lead
OTHER_REVIEWER = "other_reviewer"  # a reviewer of the other data holder
ADMIN = "admin"  # the institution admin of the project's institution
OTHER_ADMIN = "other_admin"
AUDITOR = "auditor"
OPERATOR = "operator"
ACTORS = (
    AUTHOR,
    PEER,
    REVIEWER,
    REVIEWER2,
    OTHER_RESEARCHER,
    OTHER_REVIEWER,
    ADMIN,
    OTHER_ADMIN,
    AUDITOR,
    OPERATOR,
)
REVIEWERS = frozenset({REVIEWER, REVIEWER2})
# Not an actor: a researcher the lead added after approval, waiting for the data holder.
PENDING = "pending"


@dataclass(frozen=True)
class Tenant:
    key: str
    holder: str
    institution: str
    project: str
    dataset: str  # rows access
    dp_dataset: str  # aggregate-only
    people: dict[str, str]  # relation -> username (and PENDING: the person waiting)


A = Tenant(
    "a",
    "Holder Agency",
    "Uni A",
    "study",
    "people",
    "health",
    {
        AUTHOR: "researcher",
        PEER: "researcher2",
        REVIEWER: "reviewer",
        REVIEWER2: "reviewer2",
        OTHER_RESEARCHER: "researcher_b",
        OTHER_REVIEWER: "other_reviewer",
        ADMIN: "inst_admin",
        OTHER_ADMIN: "inst_admin_b",
        AUDITOR: "auditor",
        OPERATOR: "op",
        PENDING: "pending_a",
    },
)
B = Tenant(
    "b",
    "Other Agency",
    "Uni B",
    "beta",
    "census",
    "vitals",
    {
        AUTHOR: "researcher_b",
        PEER: "researcher_b2",
        REVIEWER: "other_reviewer",
        REVIEWER2: "other_reviewer2",
        OTHER_RESEARCHER: "researcher",
        OTHER_REVIEWER: "reviewer",
        ADMIN: "inst_admin_b",
        OTHER_ADMIN: "inst_admin",
        AUDITOR: "auditor",
        OPERATOR: "op",
        PENDING: "pending_b",
    },
)
TENANTS = (A, B)
OTHER = {"a": B, "b": A}
USERNAMES = sorted({t.people[who] for t in TENANTS for who in ACTORS})


# --- the refusal sentences, written here independently of the code -------------------------


def _view(t: Tenant, who: str) -> str:
    return "Only the request's author and the data holder's reviewers may see it."


def _review(t: Tenant, who: str) -> str:
    if who == AUTHOR:
        return (
            f"You filed this request, so you cannot review it; another reviewer of {t.holder} must."
        )
    return f"Only a reviewer of {t.holder}, the project's data holder, may review it."


def _author(what: str) -> Callable[[Tenant, str], str]:
    return lambda t, who: f"Only {t.people[AUTHOR]}, who filed the request, may {what}."


def _fixed(sentence: str) -> Callable[[Tenant, str], str]:
    return lambda t, who: sentence


def _file(t: Tenant, who: str) -> str:
    return f"You are not a member of project {t.project}; ask its lead to add you."


def _enrol(t: Tenant, who: str) -> str:
    if who == OTHER_ADMIN:
        return (
            "Only a platform operator, or an institution admin for their own institution, may "
            "create accounts there."
        )
    return "Only an institution admin enrols researchers."


def _remove(t: Tenant, who: str) -> str:
    return (
        "Only a platform operator may change roles, except that an institution admin may add "
        "or remove the researcher role for people of their own institution."
    )


def _members_change(t: Tenant, who: str) -> str:
    return "Only the project's lead or a reviewer of its data holder may change its members."


def _members_see(t: Tenant, who: str) -> str:
    return f"Only members of project {t.project} and reviewers of {t.holder} see its members."


def _member_decision(t: Tenant, who: str) -> str:
    return (
        f"Only a reviewer of {t.holder}, the data holder of project {t.project}, may approve or "
        "refuse its new members."
    )


def _remove_account(t: Tenant, who: str) -> str:
    return (
        "Only a platform operator, or the institution admin of the person's own institution, "
        "may change this account."
    )


QUEUE = _fixed("Only a data holder's reviewer has a review queue.")
AUDIT_READ = _fixed("Only an auditor may read the audit log.")


@dataclass(frozen=True)
class Route:
    """One route of the application and who may use it on a tenant's objects.

    ``allowed``: the relations the route serves (anyone else is refused with ``refusal``).
    ``request``: which of the tenant's export requests the route is asked about.
    ``mutates``: an allowed call changes state; the matrix leaves those to
    test_the_own_tenant_does_each_export_action, in an order that works.
    ``scoped``: a list everyone (or every holder of the role) may open; instead of a refusal,
    it must not show the other tenant's objects (checked by test_lists_show_only_the_own_tenant).
    """

    method: str
    template: str
    allowed: frozenset[str]
    refusal: Callable[[Tenant, str], str] | None = None
    request: str = "review"  # or "released"
    mutates: bool = False
    body: Callable[[Tenant], dict[str, Any]] | None = None
    ok: int = 200

    @property
    def page(self) -> bool:
        return self.template.startswith(PAGES)


def _vote_api(t: Tenant) -> dict[str, Any]:
    return {"output": "notes.txt", "vote": "approve", "comment": "Totals only."}


def _outputs(t: Tenant) -> dict[str, Any]:
    return {"title": "Notes", "outputs": [{"name": "notes.txt", "justification": "paper"}]}


def _grant_form(t: Tenant) -> dict[str, Any]:
    return {"dataset": t.dataset, "variables": ["municipality"]}


ALL = frozenset(ACTORS)
NOBODY: frozenset[str] = frozenset()
VIEWERS = frozenset({AUTHOR}) | REVIEWERS
HOLDERS = frozenset({REVIEWER, REVIEWER2, OTHER_REVIEWER})
NOT_HOLDER = "Only a data holder's reviewers see"

ROUTES: list[Route] = [
    # --- the API: researchers -------------------------------------------------------------
    Route(
        "POST",
        f"{API}/projects/{{project}}/exports",
        frozenset({AUTHOR}),
        _file,
        body=_outputs,
        ok=202,
    ),
    Route("GET", f"{API}/exports/{{request_id}}", VIEWERS, _view),
    Route(
        "POST",
        f"{API}/exports/{{request_id}}/withdraw",
        frozenset({AUTHOR}),
        _author("withdraw it"),
        mutates=True,
        body=lambda t: {"reason": "no longer needed"},
    ),
    Route(
        "POST",
        f"{API}/exports/{{request_id}}/resubmit",
        frozenset({AUTHOR}),
        _author("resubmit it"),
        mutates=True,
        body=lambda t: {"outputs": _outputs(t)["outputs"], "note": "changed"},
    ),
    Route(
        "POST",
        f"{API}/exports/{{request_id}}/comments",
        VIEWERS,
        _review,
        body=lambda t: {"body": "A question.", "visibility": "shared"},
        ok=201,
    ),
    Route(
        "GET",
        f"{API}/exports/{{request_id}}/bundle",
        frozenset({AUTHOR}),
        _author("download its bundle"),
        request="released",
    ),
    Route(
        "GET",
        f"{API}/exports/{{request_id}}/outputs/{{output}}/safe-version",
        VIEWERS,
        _view,
        ok=422,  # notes.txt is not a table: the allowed get the input error, not a refusal
    ),
    Route(
        "POST",
        f"{API}/exports/{{request_id}}/outputs/{{output}}/accept-safe",
        frozenset({AUTHOR}),
        _author("accept a safe version"),
        mutates=True,
        body=lambda t: {"method": "suppress"},
    ),
    # --- the API: reviewers ---------------------------------------------------------------
    Route("GET", f"{API}/review/{{request_id}}", VIEWERS, _view),
    Route("GET", f"{API}/review/{{request_id}}/outputs/{{name}}", VIEWERS, _view),
    Route(
        "POST",
        f"{API}/review/{{request_id}}/votes",
        REVIEWERS,
        _review,
        mutates=True,
        body=_vote_api,
    ),
    Route(
        "POST",
        f"{API}/review/{{request_id}}/comments",
        VIEWERS,
        _review,
        body=lambda t: {"body": "A note.", "visibility": "shared"},
        ok=201,
    ),
    Route("POST", f"{API}/review/{{request_id}}/decide", REVIEWERS, _review, mutates=True),
    Route(
        "POST",
        f"{API}/review/{{request_id}}/revoke",
        REVIEWERS,
        _review,
        request="released",
        mutates=True,
        body=lambda t: {"reason": "a small cell was found"},
    ),
    Route("GET", f"{API}/review/queue", HOLDERS, QUEUE),
    # --- the pages: researchers' and reviewers' export pages ------------------------------
    Route("GET", f"{PAGES}/exports/{{request_id}}", VIEWERS, _view),
    Route("GET", f"{PAGES}/exports/{{request_id}}/outputs/{{output}}/file", VIEWERS, _view),
    Route(
        "GET",
        f"{PAGES}/exports/{{request_id}}/bundle",
        frozenset({AUTHOR}),
        _author("download its bundle"),
        request="released",
    ),
    Route(
        "POST",
        f"{PAGES}/exports/{{request_id}}/withdraw",
        frozenset({AUTHOR}),
        _author("withdraw it"),
        mutates=True,
        body=lambda t: {"reason": "no longer needed"},
    ),
    Route(
        "GET",
        f"{PAGES}/exports/{{request_id}}/outputs/{{output}}/safe-version",
        VIEWERS,
        _view,
        ok=422,
    ),
    Route(
        "POST",
        f"{PAGES}/exports/{{request_id}}/outputs/{{output}}/accept-safe",
        frozenset({AUTHOR}),
        _author("accept a safe version"),
        mutates=True,
        body=lambda t: {"method": "suppress"},
    ),
    Route(
        "POST",
        f"{PAGES}/exports/{{request_id}}/comment",
        VIEWERS,
        _review,
        body=lambda t: {"body": "A page comment."},
        ok=303,
    ),
    Route(
        "POST",
        f"{PAGES}/exports/{{request_id}}/outputs/{{output}}/vote",
        REVIEWERS,
        _review,
        mutates=True,
        body=lambda t: {"choice": "approve", "comment": "Fine."},
    ),
    Route("POST", f"{PAGES}/exports/{{request_id}}/decide", REVIEWERS, _review, mutates=True),
    Route(
        "POST",
        f"{PAGES}/exports/{{request_id}}/revoke",
        REVIEWERS,
        _review,
        request="released",
        mutates=True,
        body=lambda t: {"reason": "a small cell was found"},
    ),
    Route("GET", f"{PAGES}/review", HOLDERS, QUEUE),
    # --- the pages: data holders ----------------------------------------------------------
    Route(
        "GET",
        f"{PAGES}/holder/datasets",
        HOLDERS,
        _fixed(f"{NOT_HOLDER} its datasets here."),
    ),
    Route(
        "GET",
        f"{PAGES}/holder/projects",
        HOLDERS,
        _fixed(f"{NOT_HOLDER} its projects here."),
    ),
    Route(
        "GET",
        f"{PAGES}/holder/projects/{{slug}}",
        REVIEWERS,
        _fixed("Only a reviewer of the project's data holder sees its grants."),
    ),
    Route(
        "POST",
        f"{PAGES}/holder/projects/{{slug}}/grant",
        REVIEWERS,
        _fixed("Only a reviewer of the data holder may grant a project access to its datasets."),
        mutates=True,
        body=_grant_form,
    ),
    Route(
        "POST",
        f"{PAGES}/holder/projects/{{slug}}/topup",
        REVIEWERS,
        _fixed("Only a reviewer of the data holder may top up a project's privacy budget."),
        body=lambda t: {"dataset": t.dp_dataset, "epsilon": "0.1"},
        ok=303,
    ),
    Route(
        "POST",
        f"{PAGES}/holder/projects/{{slug}}/approve",
        REVIEWERS,
        _fixed("Only a reviewer of the data holder may decide on a project's application."),
        mutates=True,
        body=lambda t: {"note": "fine"},
    ),
    Route(
        "GET",
        f"{PAGES}/holder/access",
        HOLDERS,
        _fixed("Only a data holder's reviewers see who used its data."),
    ),
    # --- the pages: auditors and institution admins ---------------------------------------
    Route("GET", f"{PAGES}/audit", frozenset({AUDITOR}), AUDIT_READ),
    Route("GET", f"{PAGES}/audit/export", frozenset({AUDITOR}), AUDIT_READ),
    Route(
        "POST",
        f"{PAGES}/audit/verify",
        frozenset({AUDITOR, OPERATOR}),
        _fixed("Only an auditor or a platform operator may verify the audit log."),
    ),
    Route(
        "GET",
        f"{PAGES}/admin",
        frozenset({ADMIN, OTHER_ADMIN}),
        _fixed("Only an institution admin manages its researchers."),
    ),
    Route(
        "POST",
        f"{PAGES}/admin/enrol",
        frozenset({ADMIN}),
        _enrol,
        mutates=True,
        body=lambda t: {"username": f"newcomer_{t.key}", "institution": t.institution},
    ),
    Route(
        "POST",
        f"{PAGES}/admin/remove",
        frozenset({ADMIN, OPERATOR}),
        _remove,
        mutates=True,
        body=lambda t: {"username": t.people[PEER], "reason": "left"},
    ),
]

ROUTES += [
    # --- a project's members: the lead and the holder's reviewers; decisions by the holder --
    Route("GET", f"{API}/projects/{{project}}/members", VIEWERS, _members_see),
    Route(
        "POST",
        f"{API}/projects/{{project}}/members",
        VIEWERS,
        _members_change,
        mutates=True,
        body=lambda t: {"username": t.people[PEER]},
    ),
    Route(
        "DELETE",
        f"{API}/projects/{{project}}/members/{{username}}",
        VIEWERS,
        _members_change,
        mutates=True,
    ),
    Route(
        "POST",
        f"{API}/projects/{{project}}/members/{{username}}/approve",
        REVIEWERS,
        _member_decision,
        mutates=True,
        body=lambda t: {"note": "fine"},
    ),
    Route(
        "POST",
        f"{API}/projects/{{project}}/members/{{username}}/refuse",
        REVIEWERS,
        _member_decision,
        mutates=True,
        body=lambda t: {"reason": "not on the application"},
    ),
    Route(
        "POST",
        f"{PAGES}/projects/{{slug}}/members",
        VIEWERS,
        _members_change,
        mutates=True,
        body=lambda t: {"username": t.people[PEER]},
    ),
    Route(
        "POST",
        f"{PAGES}/projects/{{slug}}/members/{{username}}/remove",
        VIEWERS,
        _members_change,
        mutates=True,
        body=lambda t: {"back": ""},
    ),
    Route(
        "POST",
        f"{PAGES}/holder/projects/{{slug}}/members/{{username}}/approve",
        REVIEWERS,
        _member_decision,
        mutates=True,
        body=lambda t: {"note": "fine"},
    ),
    Route(
        "POST",
        f"{PAGES}/holder/projects/{{slug}}/members/{{username}}/refuse",
        REVIEWERS,
        _member_decision,
        mutates=True,
        body=lambda t: {"reason": "not on the application"},
    ),
    # --- another person's second factor: an operator or the person's institution admin -----
    Route(
        "POST",
        f"{API}/users/{{username}}/mfa-reset",
        frozenset({ADMIN, OPERATOR}),
        _remove_account,
        mutates=True,
        body=lambda t: {"reason": "a lost phone"},
    ),
    Route(
        "POST",
        f"{PAGES}/admin/mfa-reset",
        frozenset({ADMIN, OPERATOR}),
        _remove_account,
        mutates=True,
        body=lambda t: {"username": t.people[PENDING], "reason": "a lost phone"},
    ),
]

# Lists of one's own: anyone logged in may open them; what they show is scoped to the viewer
# (test_lists_show_only_the_own_tenant). Each has a 401 for a visitor.
SCOPED_LISTS = {
    ("GET", f"{API}/exports"),
    ("GET", f"{PAGES}/exports"),
    ("GET", f"{PAGES}/projects"),
}

# Routes about the caller's own account only: a visitor is refused (401), nobody can name
# another person's account in them.
OWN_ACCOUNT = {
    ("POST", f"{API}/me/password"),
    ("GET", f"{PAGES}/password"),
    ("POST", f"{PAGES}/password"),
    ("GET", f"{PAGES}/terms"),
    ("GET", f"{PAGES}/mfa"),
    ("POST", f"{PAGES}/mfa"),
    ("POST", f"{PAGES}/terms/accept"),
}


# --- the platform -------------------------------------------------------------------------


@dataclass
class Site:
    client: TestClient
    tokens: dict[str, str]
    requests: dict[tuple[str, str], str] = field(default_factory=dict)  # (tenant, kind) -> id
    base: Path = Path()


def _extend_world(base: Path) -> None:
    """World (tests/conftest.py) has both holders and institutions; add tenant B's second
    researcher and reviewer, its project, and both tenants' datasets, grants and approvals."""
    from spe.accounts.models import Role
    from spe.accounts.service import accept_terms, create_user, get_organisation, get_user
    from spe.accounts.service import grant_role as grant
    from spe.db import transaction
    from spe.dp.service import set_total
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from spe.projects.extracts import grant_dataset
    from spe.projects.service import add_member, approve_project, create_project, get_project

    with transaction() as s:
        op = get_user(s, "op")
        for name, org, role in (
            ("researcher_b2", "Uni B", Role.RESEARCHER),
            ("other_reviewer2", "Other Agency", Role.HOLDER_REVIEWER),
        ):
            organisation = get_organisation(s, org)
            user, _ = create_user(s, op, name, organisation, password=PASSWORD)
            grant(s, op, user, role, organisation)
    with transaction() as s:
        today = dt.datetime.now(dt.UTC).date()
        create_project(
            s,
            get_user(s, "researcher_b"),
            "beta",
            "Employment survey",
            "Employment and wages",
            get_organisation(s, "Other Agency"),
            get_organisation(s, "Uni B"),
            today,
            today + dt.timedelta(days=30),
        )
    policies = base / "policies"
    for t in TENANTS:
        rows = write_policy(base, t.dataset)
        rows.write_text(rows.read_text().replace("holder: Holder Agency", f"holder: {t.holder}"))
        start = 0 if t is A else 10_000
        ingest(
            t.people[REVIEWER],
            write_people_csv(base / f"{t.dataset}.csv", synthetic_numbers(40, start)),
            load_policy(rows),
        )
        dp_policy = policies / "datasets" / f"{t.dp_dataset}.yaml"
        dp_policy.write_text(
            HEALTH_POLICY.format(total=1.0)
            .replace("dataset: health", f"dataset: {t.dp_dataset}")
            .replace("holder: Holder Agency", f"holder: {t.holder}")
        )
        ingest(
            t.people[REVIEWER],
            write_health_csv(base / f"{t.dp_dataset}.csv", 60),
            load_policy(dp_policy),
        )
        with transaction() as s:
            project = get_project(s, t.project)
            reviewer = get_user(s, t.people[REVIEWER])
            grant_dataset(s, reviewer, project, t.dataset, ["municipality", "income"])
            grant_dataset(s, reviewer, project, t.dp_dataset, ["sex", "age"])
            approve_project(s, reviewer, project)
            set_total(s, reviewer, t.dp_dataset, 3.0)  # room for the matrix's top-ups
    with transaction() as s:
        op = get_user(s, "op")
        for t in TENANTS:
            institution = get_organisation(s, t.institution)
            user, _ = create_user(s, op, t.people[PENDING], institution, password=PASSWORD)
            grant(s, op, user, Role.RESEARCHER, institution)
    for t in TENANTS:  # added after approval: waits for the data holder
        with transaction() as s:
            add_member(
                s,
                get_user(s, t.people[AUTHOR]),
                get_project(s, t.project),
                get_user(s, t.people[PENDING]),
            )
    with transaction() as s:
        for name in USERNAMES:
            accept_terms(s, get_user(s, name))


def _file_request(t: Tenant, outbox: Path, *names: str) -> str:
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.exports import actions
    from spe.projects.service import get_project
    from spe.tasks import run_inline

    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, t.people[AUTHOR]),
            get_project(s, t.project),
            [actions.OutputRequest(n, f"for the paper ({n})") for n in names],
            f"Figures of {t.project}",
            outbox,
        )
        rid = str(request.id)
    run_inline(job)
    return rid


def _release(t: Tenant, rid: str) -> None:
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.exports import actions

    for who in (REVIEWER, REVIEWER2):
        with transaction() as s:
            request = actions.get_request(s, rid)
            actions.vote(s, get_user(s, t.people[who]), request, "notes.txt", "approve", "ok")
    with transaction() as s:
        status = actions.decide(s, get_user(s, t.people[REVIEWER]), actions.get_request(s, rid))
    assert status.value == "released"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Site]:
    """One platform for the module (SQLite): both tenants, each with an export request in
    review (a picture and a text) and a released one, and an API token per person."""
    from spe.accounts.service import get_user
    from spe.accounts.tokens import create_token
    from spe.api import create_app
    from spe.db import transaction
    from spe.exports.actions import default_outbox
    from spe.projects.service import get_project

    base = tmp_path_factory.mktemp("tenants")
    with pytest.MonkeyPatch.context() as mp:
        _clear_spe_env(mp)
        state = base / "var"
        shutil.copytree(sqlite_template, state)
        os.chmod(state / "keys" / "platform.key", 0o600)
        mp.setenv("SPE_STATE_DIR", str(state))
        mp.setenv("SPE_POLICIES_DIR", str(policies_folder(base)))
        _reset_spe()
        World()
        _extend_world(base)
        client = TestClient(create_app())
        site = Site(client=client.__enter__(), tokens={}, base=base)  # one event loop for all
        for t in TENANTS:
            outbox = base / f"outbox-{t.key}"
            outbox.mkdir()
            (outbox / "plot.png").write_bytes(png_bytes())
            (outbox / "notes.txt").write_text("Income rises with education.\n")
            site.requests[(t.key, "review")] = _file_request(t, outbox, "plot.png", "notes.txt")
            site.requests[(t.key, "released")] = _file_request(t, outbox, "notes.txt")
            _release(t, site.requests[(t.key, "released")])
            with transaction() as s:  # what the API files from: the workspace's own outbox
                api_outbox = default_outbox(get_project(s, t.project), t.people[AUTHOR])
            api_outbox.mkdir(parents=True, exist_ok=True)
            (api_outbox / "notes.txt").write_text("Income rises with education.\n")
        with transaction() as s:
            from spe.accounts.service import change_password, reset_password

            op = get_user(s, "op")  # bootstrapped with a one-time password: sets their own
            change_password(s, op, reset_password(s, op, op), "plum kettle orbit seventy")
        with transaction() as s:
            site.tokens = {name: create_token(s, get_user(s, name)) for name in USERNAMES}
        try:
            yield site
        finally:
            client.__exit__(None, None, None)
    _reset_spe()


def call(site: Site, who: str | None, method: str, path: str, body: dict[str, Any] | None) -> Any:
    headers = {"Authorization": f"Bearer {site.tokens[who]}"} if who else {}
    kw: dict[str, Any] = {}
    if body is not None:
        kw["data" if path.startswith(PAGES) else "json"] = body
    return site.client.request(method, path, headers=headers, follow_redirects=False, **kw)


def path_of(site: Site, route: Route, t: Tenant) -> str:
    rid = site.requests[(t.key, route.request)]
    return (
        route.template.replace("{request_id}", rid)
        .replace("{output}", "notes.txt")
        .replace("{name}", "notes.txt")
        .replace("{project}", t.project)
        .replace("{slug}", t.project)
        .replace("{username}", t.people[PENDING])
    )


def text(response: Any) -> str:
    """A page's visible text (tags removed, white space folded), or an API refusal's detail."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return str(response.json().get("detail"))
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text)))


def refusals_of(username: str, sentence: str | None = None) -> Any:
    """How many refusals the audit log holds for ``username``: events, summaries of a minute's
    further refusals, and the current minute's tally (which becomes a summary). With
    ``sentence``: also whether one of them carries it (an event, or this minute's tally)."""
    from spe.audit.models import AuditEvent
    from spe.audit.refusals import REFUSED, REFUSED_MORE, RefusalTally
    from spe.db import readonly

    with readonly() as s:
        rows = s.execute(
            select(AuditEvent.action, AuditEvent.details).where(
                AuditEvent.actor == username, AuditEvent.action.in_([REFUSED, REFUSED_MORE])
            )
        ).all()
        details = [(a, json.loads(d)) for a, d in rows]
        counted = sum(1 if a == REFUSED else int(d["more"]) for a, d in details)
        tallies = s.execute(
            select(RefusalTally.count, RefusalTally.sentence).where(RefusalTally.actor == username)
        ).all()
    counted += sum(c - 1 for c, _ in tallies)
    if sentence is None:
        return counted
    logged = any(a == REFUSED and d.get("sentence") == sentence for a, d in details) or any(
        said == sentence for _, said in tallies
    )
    return counted, logged


def cells() -> list[tuple[Route, Tenant, str]]:
    return [(r, t, who) for r in ROUTES for t in TENANTS for who in ACTORS]


def check_cell(
    site: Site, route: Route, t: Tenant, who: str, counted: dict[str, int]
) -> str | None:
    """Run one cell; None when it held, else what went wrong. ``counted``: each person's
    refusals in the log so far (kept up to date here, to read the log once per cell)."""
    username = t.people[who]
    path = path_of(site, route, t)
    body = route.body(t) if route.body else None
    if who in route.allowed:
        if route.mutates:
            return None  # done in order by test_the_own_tenant_does_each_export_action
        response = call(site, username, route.method, path, body)
        if response.status_code != route.ok:
            return f"allowed but got {response.status_code}: {text(response)[:200]}"
        return None
    assert route.refusal is not None, route.template
    sentence = route.refusal(t, who)
    response = call(site, username, route.method, path, body)
    if response.status_code != 403:
        return f"not refused: {response.status_code} {text(response)[:200]}"
    shown = text(response)
    if route.page and sentence not in shown:
        return f"page does not say {sentence!r}: {shown[:300]}"
    if not route.page and shown != sentence:
        return f"says {shown!r}, not {sentence!r}"
    now, logged = refusals_of(username, sentence)
    if now != counted[username] + 1:
        return f"{now - counted[username]} refusals written to the audit log, not 1"
    counted[username] = now
    if not logged:
        return "the logged refusal does not carry the sentence"
    return None


def test_every_role_against_both_tenants_on_every_route(site):
    """The matrix: every route x both tenants x every relation. Failures are collected so that
    one run names every broken cell."""
    broken = []
    counted = {name: refusals_of(name) for name in USERNAMES}
    for route, t, who in cells():
        problem = check_cell(site, route, t, who, counted)
        if problem:
            broken.append(f"{route.method} {route.template} [{t.key}] as {who}: {problem}")
    assert not broken, "\n".join(broken)


FORM_REFUSED = "This form was not sent from an SPE page open in this browser"


def test_a_visitor_is_asked_to_log_in_on_every_route_that_is_not_public(site):
    """Without a login nothing but the public routes answers: 401 with how to log in, or (a
    form post of the pages without this browser's form token) 403 before anything is read."""
    routes = [(r.method, r.template, path_of(site, r, A), r.body) for r in ROUTES]
    routes += [(m, t, t, None) for m, t in sorted(SCOPED_LISTS | OWN_ACCOUNT)]
    for method, template, path, body in routes:
        response = call(site, None, method, path, body(A) if body else None)
        if response.status_code == 400:  # a form without its fields: nothing was read
            assert "The form is missing" in text(response), template
        elif response.status_code == 403:
            assert template.startswith(PAGES) and method == "POST", template
            assert FORM_REFUSED in text(response), template
        else:
            assert response.status_code == 401, (template, response.status_code)


def _ids(response: Any) -> set[str]:
    return {r["id"] for r in response.json()}


def test_lists_show_only_the_own_tenant(site):
    """Lists everyone may open hold only the viewer's own: requests, projects, queues,
    datasets, projects of a holder, researchers of an institution, who used my data."""
    for t in TENANTS:
        other = OTHER[t.key]
        mine = {site.requests[(t.key, k)] for k in ("review", "released")}
        theirs = {site.requests[(other.key, k)] for k in ("review", "released")}
        author, reviewer, admin = (t.people[r] for r in (AUTHOR, REVIEWER, ADMIN))

        listed = call(site, author, "GET", f"{API}/exports", None)
        assert listed.status_code == 200 and _ids(listed) >= mine and not _ids(listed) & theirs
        scoped = call(site, author, "GET", f"{API}/exports?project={other.project}", None)
        assert scoped.status_code == 200 and scoped.json() == []
        for who in ACTORS:
            if who != AUTHOR:
                listed = call(site, t.people[who], "GET", f"{API}/exports", None)
                assert not _ids(listed) & mine, (t.key, who)
        page = text(call(site, author, "GET", f"{PAGES}/exports", None))
        assert all(r[:8] in page for r in mine) and not any(r[:8] in page for r in theirs)
        page = text(call(site, author, "GET", f"{PAGES}/projects", None))
        assert re.search(rf"\b{t.project}\b", page)
        assert not re.search(rf"\b{other.project}\b", page)
        assert not re.search(rf"\b{other.dp_dataset}\b", page)  # nor the other's budgets

        queue = call(site, reviewer, "GET", f"{API}/review/queue", None)
        assert site.requests[(t.key, "review")] in _ids(queue)
        assert not _ids(queue) & theirs
        page = call(site, reviewer, "GET", f"{PAGES}/review", None).text
        assert site.requests[(t.key, "review")] in page and not any(r in page for r in theirs)
        page = text(call(site, reviewer, "GET", f"{PAGES}/holder/datasets", None))
        assert re.search(rf"\b{t.dataset}\b", page)
        assert not re.search(rf"\b({other.dataset}|{other.dp_dataset})\b", page)
        page = text(call(site, reviewer, "GET", f"{PAGES}/holder/projects", None))
        assert re.search(rf"\b{t.project}\b", page)
        assert not re.search(rf"\b{other.project}\b", page)
        page = call(site, admin, "GET", f"{PAGES}/admin", None).text
        assert f'name="username" value="{t.people[PEER]}"' in page
        assert not any(f'value="{other.people[r]}"' in page for r in (AUTHOR, PEER))


def test_who_used_my_data_shows_only_the_own_holders_events(site):
    """'Who used my data' filters the log by the holder's datasets and projects: the other
    holder's requests, datasets and project never appear, even when asked for by name."""
    for t in TENANTS:
        other = OTHER[t.key]
        reviewer = t.people[REVIEWER]
        page = call(site, reviewer, "GET", f"{PAGES}/holder/access", None)
        assert page.status_code == 200
        shown = text(page)
        assert site.requests[(t.key, "review")] in page.text or t.project in shown
        for rid in (site.requests[(other.key, k)] for k in ("review", "released")):
            assert rid not in page.text
        assert not re.search(rf"\b({other.project}|{other.dataset}|{other.dp_dataset})\b", shown)
        asked = call(site, reviewer, "GET", f"{PAGES}/holder/access?project={other.project}", None)
        assert asked.status_code == 200
        assert not any(site.requests[(other.key, k)] in asked.text for k in ("review", "released"))


def test_the_own_tenant_does_each_export_action(site):
    """The allowed calls that change state, in an order that works, for both tenants: file,
    vote, decide, download, revoke, withdraw, accept-safe and resubmit (refused by state, not
    by permission), and the holder's grant, approve, enrol and remove."""
    for t in TENANTS:
        author, reviewer, reviewer2 = (t.people[r] for r in (AUTHOR, REVIEWER, REVIEWER2))
        rid = site.requests[(t.key, "review")]
        vote = {"output": "notes.txt", "vote": "approve", "comment": "Totals only."}
        for who in (reviewer, reviewer2):
            assert call(site, who, "POST", f"{API}/review/{rid}/votes", vote).status_code == 201
            for output in ("plot.png",):
                page_vote = call(
                    site,
                    who,
                    "POST",
                    f"{PAGES}/exports/{rid}/outputs/{output}/vote",
                    {"choice": "approve", "comment": "Fine."},
                )
                assert page_vote.status_code == 303, text(page_vote)
        decided = call(site, reviewer, "POST", f"{PAGES}/exports/{rid}/decide", None)
        assert decided.status_code == 303, text(decided)
        again = call(site, reviewer2, "POST", f"{API}/review/{rid}/decide", None)
        assert again.status_code == 409  # a state rule now, not a permission
        for path in (f"{API}/exports/{rid}/bundle", f"{PAGES}/exports/{rid}/bundle"):
            bundle = call(site, author, "GET", path, None)
            assert bundle.status_code == 200 and bundle.content[:2] == b"PK"
        revoked = call(
            site, reviewer2, "POST", f"{API}/review/{rid}/revoke", {"reason": "small cell"}
        )
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        released = site.requests[(t.key, "released")]
        page_revoke = call(
            site, reviewer, "POST", f"{PAGES}/exports/{released}/revoke", {"reason": "small"}
        )
        assert page_revoke.status_code == 303, text(page_revoke)

        filed = call(site, author, "POST", f"{API}/projects/{t.project}/exports", _outputs(t))
        assert filed.status_code == 202
        new = filed.json()["request"]["id"]
        from spe.tasks import run_inline

        run_inline(filed.json()["check_job"])
        resubmit = {"outputs": _outputs(t)["outputs"], "note": "x"}
        early = call(site, author, "POST", f"{API}/exports/{new}/resubmit", resubmit)
        assert early.status_code == 409  # the reviewers asked for no changes
        safe = call(
            site,
            author,
            "POST",
            f"{API}/exports/{new}/outputs/notes.txt/accept-safe",
            {"method": "suppress"},
        )
        assert safe.status_code not in (401, 403) and safe.status_code >= 400
        withdrawn = call(site, author, "POST", f"{API}/exports/{new}/withdraw", {"reason": "x"})
        assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
        filed = call(site, author, "POST", f"{API}/projects/{t.project}/exports", _outputs(t))
        run_inline(filed.json()["check_job"])
        page_withdraw = call(
            site,
            author,
            "POST",
            f"{PAGES}/exports/{filed.json()['request']['id']}/withdraw",
            {"reason": "x"},
        )
        assert page_withdraw.status_code == 303

        slug = t.project
        grant = call(
            site, reviewer, "POST", f"{PAGES}/holder/projects/{slug}/grant", _grant_form(t)
        )
        assert grant.status_code == 303, text(grant)
        approve = call(site, reviewer, "POST", f"{PAGES}/holder/projects/{slug}/approve", {})
        assert approve.status_code not in (401, 403) and "is approved and cannot" in text(approve)

        admin = t.people[ADMIN]
        enrol = {"username": f"newcomer_{t.key}", "institution": t.institution}
        enrolled = call(site, admin, "POST", f"{PAGES}/admin/enrol", enrol)
        assert enrolled.status_code == 200 and f"newcomer_{t.key}" in text(enrolled)
        removed = call(
            site,
            admin,
            "POST",
            f"{PAGES}/admin/remove",
            {"username": f"newcomer_{t.key}", "reason": "left"},
        )
        assert removed.status_code == 303, text(removed)


# --- what has no route: DP answers and budgets, ingest and quarantine (functions the CLI and
# the airlock call; their handlers write the refusal event) -----------------------------


def _as(username: str, fn: Callable[..., Any], *args: Any) -> str | None:
    """Call ``fn(session, user, *args)``; the refusal sentence, or None when allowed."""
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.errors import PermissionDenied

    try:
        with transaction() as s:
            fn(s, get_user(s, username), *args)
    except PermissionDenied as refused:
        return refused.message
    return None


def test_dp_budgets_answers_and_holder_functions_refuse_the_other_tenant(site):
    from spe.dp import service as dp

    for t in TENANTS:
        other = OTHER[t.key]
        budgets = (
            f"Only members of project {t.project} and reviewers of its data holder may see "
            "its privacy budgets."
        )
        for who in ACTORS:
            name = t.people[who]
            expected = None if who in (AUTHOR, REVIEWER, REVIEWER2) else budgets
            assert _as(name, dp.budgets, t.project) == expected, (t.key, who)
            assert _as(name, dp.history, t.project) == expected, (t.key, who)
            may_use = None if who == AUTHOR else _file(t, who)
            assert _as(name, dp.variables, t.project, t.dp_dataset) == may_use, (t.key, who)
        topup = "Only a reviewer of the data holder may top up a project's privacy budget."
        assert _as(other.people[REVIEWER], dp.topup, t.project, t.dp_dataset, 0.1) == topup
        assert _as(t.people[REVIEWER], dp.topup, t.project, t.dp_dataset, 0.1) is None
        refused = _as(other.people[REVIEWER], dp.set_total, t.dp_dataset, 2.0)
        assert refused == (
            f"Only a reviewer of the data holder of {t.dp_dataset!r} may set its privacy budget."
        )
        assert _as(t.people[REVIEWER2], dp.set_total, t.dp_dataset, 3.0) is None
        # A DP question as the airlock's verb asks it (the workspace names only itself).
        from spe.errors import PermissionDenied

        with pytest.raises(PermissionDenied) as asked:
            dp.submit_query(
                other.people[AUTHOR],
                t.project,
                {"dataset": t.dp_dataset, "kind": "count", "epsilon": 0.1},
            )
        assert asked.value.message == _file(t, OTHER_RESEARCHER)


def test_ingest_and_quarantine_refuse_the_other_holder(site):
    from spe.accounts.permissions import Action, Target, check_can
    from spe.accounts.service import get_organisation
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy

    for t in TENANTS:
        other = OTHER[t.key]
        for who in ACTORS:
            name = t.people[who]
            for action, what in (
                (Action.DATASET_QUARANTINE_READ, "open its quarantine files"),
                (Action.DATASET_INGEST, "publish its datasets"),
                (Action.DATASET_ACCESS_LOG, "see who used its data"),
            ):

                def ask(s: Any, user: Any, action: Action = action, holder: str = t.holder) -> None:
                    org = get_organisation(s, holder)
                    check_can(s, user, action, Target(organisation=org))

                expected = (
                    None if who in REVIEWERS else f"Only a reviewer of the data holder may {what}."
                )
                assert _as(name, ask) == expected, (t.key, who, action)
        policy = load_policy(site.base / f"{t.dataset}.yaml")
        from spe.errors import PermissionDenied

        with pytest.raises(PermissionDenied, match="Only a reviewer of the data holder"):
            ingest(other.people[REVIEWER], site.base / f"{t.dataset}.csv", policy)
