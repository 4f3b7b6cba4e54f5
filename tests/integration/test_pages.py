"""The pages, per role, over the real application and database (FastAPI's TestClient; no
browser here: tests/browser drives Chromium through the whole story). People are identified by
SPE API tokens, which the pages accept as the API does; the hub's OAuth login is exercised by
the browser test. The platform is the demo's, on 3,000 generated persons."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spe.accounts.service import change_password, get_user
from spe.accounts.tokens import create_token
from spe.api import create_app
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.projects.service import get_project
from spe.tasks import run_inline
from spe.web import PREFIX

USERS = (
    "demo-researcher",
    "demo-holder",
    "demo-reviewer2",
    "demo-auditor",
    "demo-admin",
    "demo-operator",
)


def set_own_passwords(usernames: Any, password: str = "plum kettle orbit seventy") -> None:  # noqa: S107
    """The demo's people have set their own passwords (a one-time one opens nothing but the
    page that sets one, and gets no API token): an operator's reset, then the person's change."""
    from spe.accounts.service import reset_password

    with transaction() as s:
        operator = get_user(s, "demo-operator")
        for username in usernames:
            person = get_user(s, username)
            change_password(s, person, reset_password(s, operator, person), password)


@pytest.fixture
def site(spe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo platform; the researcher has filed one table that fails a check."""
    import spe.analysis as sa
    from spe.demo import PROJECT, publish_demo_data, set_up_demo
    from spe.projects.extracts import workspace_mounts

    set_up_demo()
    set_own_passwords(USERS)
    publish_demo_data(persons=3000)
    with readonly() as s:
        project = get_project(s, PROJECT)
        mounts = workspace_mounts(s, project)
        outbox = actions.default_outbox(project, "demo-researcher")
    data = tmp_path / "data"
    data.mkdir()
    for name, folder in mounts.items():
        (data / name).symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(data))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(outbox))
    reset_settings()
    pop = sa.load("population")
    # Two small cells (persons born before 1930: 5 women, 7 men of 3,000) with a safe version.
    year = pop["birth_date"].astype(int)
    pop["era"] = "1980 or later"
    pop.loc[year < 1980, "era"] = "1930-1979"
    pop.loc[year < 1930, "era"] = "before 1930"
    table = sa.crosstab(pop, "sex", "era", name="small_cells")
    assert not table.passed
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, "demo-researcher"),
            get_project(s, PROJECT),
            [OutputRequest("small_cells.csv", "Table 1 of the paper")],
            "Tables for the paper",
        )
        rid = str(request.id)
        tokens = {name: create_token(s, get_user(s, name)) for name in USERS}
    run_inline(job)
    return {"client": TestClient(create_app()), "tokens": tokens, "request": rid}


def get(site: dict[str, Any], who: str | None, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {site['tokens'][who]}"} if who else {}
    return site["client"].get(PREFIX + path, headers=headers, follow_redirects=False, **kw)


def post(site: dict[str, Any], who: str | None, path: str, data: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {site['tokens'][who]}"} if who else {}
    return site["client"].post(PREFIX + path, headers=headers, data=data, follow_redirects=False)


def text(response: Any) -> str:
    """The page's visible text, tags removed, white space folded."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text)))


def test_the_catalogue_is_public_and_shows_no_statistic_of_the_data(site):
    listing = get(site, None, "/catalogue")
    assert listing.status_code == 200
    for name in ("population", "income", "education", "employment"):
        assert f"{PREFIX}/catalogue/{name}" in listing.text
    entry = get(site, None, "/catalogue/population")
    assert entry.status_code == 200
    body = text(entry)
    assert "Conditions for re-use" in body and "How to apply" in body
    assert "municipality" in body and "Demo Registry Agency" in body
    for statistic in ("minimum", "maximum", "mean", "median"):
        assert statistic not in body.lower()
    assert get(site, None, "/catalogue/nope").status_code == 404
    assert "no dataset 'nope'" in text(get(site, None, "/catalogue/nope"))


# (path, the users who may open it); everyone else is refused with a sentence.
def _visibility(rid: str) -> list[tuple[str, set[str]]]:
    return [
        ("/projects", {"demo-researcher"}),
        ("/exports", {"demo-researcher"}),
        (f"/exports/{rid}", {"demo-researcher", "demo-holder", "demo-reviewer2"}),
        ("/review", {"demo-holder", "demo-reviewer2"}),
        ("/holder/datasets", {"demo-holder", "demo-reviewer2"}),
        ("/holder/projects", {"demo-holder", "demo-reviewer2"}),
        ("/holder/projects/demo-income-study", {"demo-holder", "demo-reviewer2"}),
        ("/holder/access", {"demo-holder", "demo-reviewer2"}),
        ("/audit", {"demo-auditor"}),
        ("/audit/export?fmt=csv", {"demo-auditor"}),
        ("/admin", {"demo-admin"}),
    ]


ANYONE = {"/projects", "/exports"}  # lists of one's own: empty for others, never refused


def test_every_page_shows_only_what_the_viewer_may_see(site):
    rid = site["request"]
    for path, allowed in _visibility(rid):
        anonymous = get(site, None, path)
        assert anonymous.status_code == 401, path
        assert "Log in" in text(anonymous) or "log" in text(anonymous).lower()
        for user in USERS:
            response = get(site, user, path)
            if user in allowed or path in ANYONE:
                assert response.status_code == 200, (path, user, text(response)[:300])
            else:
                assert response.status_code == 403, (path, user, response.status_code)
                assert "Only" in text(response) or "may" in text(response), (path, user)
    # A researcher's own lists hold only their own: another researcher's request is not shown.
    assert rid in get(site, "demo-researcher", "/exports").text
    assert rid not in get(site, "demo-admin", "/exports").text
    assert "demo-income-study" not in text(get(site, "demo-admin", "/projects"))


def test_the_navigation_offers_each_role_its_own_pages(site):
    def nav(user: str) -> set[str]:
        html = get(site, user, "/").text
        block = html.split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
        return set(re.findall(r'href="[^"]*?/services/spe(/[^"]*)"', block))

    assert {"/projects", "/exports"} <= nav("demo-researcher")
    assert "/audit" not in nav("demo-researcher") and "/review" not in nav("demo-researcher")
    assert {"/review", "/holder/access"} <= nav("demo-holder")
    assert nav("demo-auditor") == {"/catalogue", "/audit"}
    assert nav("demo-admin") == {"/catalogue", "/admin"}


def test_the_request_page_marks_each_failing_cell_with_its_rule_and_numbers(site):
    rid = site["request"]
    page = get(site, "demo-holder", f"/exports/{rid}")
    assert page.status_code == 200
    failing = re.findall(r'<td class="cell c-fail[^"]*"', page.text)
    assert failing, "no failing cell is marked"
    body = text(page)
    assert "threshold" in body and "persons" in body
    assert "Your vote on small_cells.csv" in body  # reviewers vote per output
    # The researcher sees the same reasons, and may accept a safe version instead of voting.
    mine = get(site, "demo-researcher", f"/exports/{rid}")
    assert len(re.findall(r'<td class="cell c-fail[^"]*"', mine.text)) == len(failing)
    assert "A safe version of small_cells.csv" in text(mine)
    assert "Your vote" not in text(mine)
    preview = get(site, "demo-researcher", f"/exports/{rid}/outputs/small_cells.csv/safe-version")
    assert preview.status_code == 200
    assert "Accept this safe version of small_cells.csv" in text(preview)
    assert 'class="cell withheld"' in preview.text


def test_the_researcher_accepts_the_safe_version_and_it_is_checked_again(site):
    rid = site["request"]
    accepted = post(
        site,
        "demo-researcher",
        f"/exports/{rid}/outputs/small_cells.csv/accept-safe",
        {"method": "suppress"},
    )
    assert accepted.status_code == 303, text(accepted)[:300]
    with readonly() as s:
        request = actions.get_request(s, rid)
        assert (request.round, request.status.value) == (2, "checking")
    # A reviewer cannot accept it for the researcher.
    refused = post(site, "demo-holder", f"/exports/{rid}/outputs/small_cells.csv/accept-safe", {})
    assert refused.status_code in (403, 409)


def test_pages_are_never_framed_cached_or_given_foreign_scripts(site):
    for user, path in ((None, "/catalogue"), ("demo-holder", f"/exports/{site['request']}")):
        headers = get(site, user, path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY"


def test_a_form_without_this_browsers_token_is_refused_and_changes_nothing(site):
    rid = site["request"]
    refused = post(site, None, f"/exports/{rid}/decide", {})
    assert refused.status_code == 403
    assert "reload the page" in text(refused)
    with readonly() as s:
        assert actions.get_request(s, rid).status.value == "in_review"


def test_reviewers_vote_with_reasons_and_the_second_reviewer_confirms_the_override(site):
    rid = site["request"]
    first = post(
        site,
        "demo-holder",
        f"/exports/{rid}/outputs/small_cells.csv/vote",
        {"choice": "approve", "comment": "Published at municipality level already."},
    )
    assert first.status_code == 303
    early = post(site, "demo-holder", f"/exports/{rid}/decide", {})
    assert early.status_code == 409
    assert "second reviewer" in text(early)
    second = post(
        site,
        "demo-reviewer2",
        f"/exports/{rid}/outputs/small_cells.csv/vote",
        {"choice": "approve", "comment": "Agreed."},
    )
    assert second.status_code == 303
    decided = post(site, "demo-reviewer2", f"/exports/{rid}/decide", {})
    assert decided.status_code == 303
    assert get(site, "demo-holder", f"/exports/{rid}").status_code == 200
    mine = get(site, "demo-researcher", f"/exports/{rid}")
    assert "Download the signed bundle" in mine.text
    bundle = get(site, "demo-researcher", f"/exports/{rid}/bundle")
    assert bundle.status_code == 200 and bundle.content[:2] == b"PK"
    assert get(site, "demo-holder", f"/exports/{rid}/bundle").status_code == 403


def test_a_missing_form_field_is_a_sentence_not_an_error_page(site):
    rid = site["request"]
    response = post(site, "demo-holder", f"/exports/{rid}/outputs/small_cells.csv/vote", {})
    assert response.status_code == 400
    assert "missing choice" in text(response)


def test_the_holder_sees_datasets_ingest_reports_projects_and_who_used_the_data(site):
    datasets = text(get(site, "demo-holder", "/holder/datasets"))
    assert "Population register" in datasets and "Rejected by reason" in datasets
    projects = text(get(site, "demo-holder", "/holder/projects"))
    assert "demo-income-study" in projects and "demo-county-study" in projects
    access = get(site, "demo-holder", "/holder/access")
    body = text(access)
    assert "export.file" in body and "dataset.ingest" in body
    only_exports = text(get(site, "demo-holder", "/holder/access?action=export.*"))
    assert "export.file" in only_exports and "dataset.ingest" not in only_exports


def test_a_holder_grants_variables_through_the_form(site):
    page = text(get(site, "demo-holder", "/holder/projects/demo-county-study"))
    assert "Grant a dataset" in page
    response = post(
        site,
        "demo-holder",
        "/holder/projects/demo-county-study/grant",
        {"dataset": "population", "variables": ["sex", "birth_date"], "gen_birth_date": "year"},
    )
    assert response.status_code == 303, text(response)[:300]
    after = text(get(site, "demo-holder", "/holder/projects/demo-county-study"))
    assert "birth_date (year)" in after
    response = post(
        site,
        "demo-holder",
        "/holder/projects/demo-county-study/grant",
        {"dataset": "income", "variables": ["year", "wage_income"]},
    )
    assert response.status_code == 303, text(response)[:300]
    after = text(get(site, "demo-holder", "/holder/projects/demo-county-study"))
    assert "wage_income" in after
    bad = post(
        site,
        "demo-holder",
        "/holder/projects/demo-county-study/grant",
        {"dataset": "income", "variables": ["shoe_size"]},
    )
    assert bad.status_code == 400 and "no variable 'shoe_size'" in text(bad)


def test_the_auditor_filters_pages_exports_and_verifies_the_log(site):
    from spe.audit.seal import seal_once

    while seal_once():
        pass
    first = get(site, "demo-auditor", "/audit?limit=10")
    assert first.status_code == 200
    body = text(first)
    assert "valid" in body and "Newest signed checkpoint" in body
    assert len(re.findall(r"<tr", first.text.split("<tbody>", 1)[1])) == 10
    older = re.search(r'href="([^"]*before=(\d+))"', first.text)
    assert older is not None
    second = get(site, "demo-auditor", older.group(1).replace("&amp;", "&")[len(PREFIX) :])
    seqs = [int(s) for s in re.findall(r'<td class="num">(\d+)</td>', second.text)]
    assert seqs and max(seqs) < int(older.group(2)) and seqs == sorted(seqs, reverse=True)
    filtered = text(get(site, "demo-auditor", "/audit?actor=demo-researcher"))
    assert "export.file" in filtered and "dataset.ingest" not in filtered
    csv = get(site, "demo-auditor", "/audit/export?fmt=csv&action=export.*")
    assert csv.status_code == 200 and csv.text.startswith("seq,time,actor")
    assert "export.file" in csv.text and "dataset.ingest" not in csv.text
    verified = post(site, "demo-auditor", "/audit/verify", {})
    assert verified.status_code == 200 and "Verified:" in text(verified)
    # Reading the log is itself logged.
    with readonly() as s:
        from spe.audit.query import EventFilter, last_events

        reads = {e.action for e in last_events(s, 10, EventFilter(actor="demo-auditor"))}
    assert {"audit.browse", "audit.export", "audit.verify"} <= reads


def test_the_institution_admin_enrols_and_removes_a_researcher(site):
    page = text(get(site, "demo-admin", "/admin"))
    assert "demo-researcher" in page and "Demo University" in page
    enrolled = post(
        site, "demo-admin", "/admin/enrol", {"username": "new-person", "full_name": "New Person"}
    )
    assert enrolled.status_code == 200
    assert "one-time password" in text(enrolled)
    assert "not accepted" in text(get(site, "demo-admin", "/admin"))
    removed = post(
        site, "demo-admin", "/admin/remove", {"username": "new-person", "reason": "left"}
    )
    assert removed.status_code == 303
    with readonly() as s:
        assert not get_user(s, "new-person").active


def test_budgets_show_to_the_researcher_and_the_holder_tops_them_up(site):
    mine = text(get(site, "demo-researcher", "/projects"))
    assert "Privacy budgets" in mine and "health" in mine
    assert "not shown (queried privately)" in mine  # no exact count of an aggregate-only extract
    page = text(get(site, "demo-holder", "/holder/projects/demo-income-study"))
    assert "Privacy budgets" in page and "Add ε" in page
    added = post(
        site,
        "demo-holder",
        "/holder/projects/demo-income-study/topup",
        {"dataset": "health", "epsilon": "0.5"},
    )
    assert added.status_code == 303, text(added)[:300]
    from spe.dp.service import budgets

    with readonly() as s:
        after = {
            b["dataset"]: b for b in budgets(s, get_user(s, "demo-holder"), "demo-income-study")
        }
    assert after["health"]["total"] == pytest.approx(3.5)
    refused = post(
        site,
        "demo-researcher",
        "/holder/projects/demo-income-study/topup",
        {"dataset": "health", "epsilon": "5"},
    )
    assert refused.status_code == 403
    nonsense = post(
        site,
        "demo-holder",
        "/holder/projects/demo-income-study/topup",
        {"dataset": "health", "epsilon": "lots"},
    )
    assert nonsense.status_code == 400 and "not a number" in text(nonsense)


def test_a_login_answer_this_browser_did_not_start_is_refused_without_a_loop(site):
    """The hub's OAuth is not running under TestClient; the callback's own check is tested."""
    answer = get(site, None, "/oauth_callback?code=stolen&state=forged")
    assert answer.status_code == 401
    assert "log in again" in text(answer)


# --- small defects (issue 16, point 9), on a small world rather than the demo --------------


@pytest.fixture
def small_site(spe_env: dict[str, str]) -> dict[str, Any]:
    from tests.conftest import World

    World()
    with transaction() as s:
        tokens = {name: create_token(s, get_user(s, name)) for name in ("auditor", "reviewer")}
    return {"client": TestClient(create_app()), "tokens": tokens}


@pytest.mark.parametrize(("who", "path"), [("auditor", "/audit"), ("reviewer", "/holder/access")])
@pytest.mark.parametrize("before", ["99999999999999999999999", "-1"])
def test_a_paging_number_beyond_the_database_is_a_sentence_not_a_500(small_site, who, path, before):
    answer = get(small_site, who, f"{path}?before={before}")
    assert answer.status_code == 400
    assert "'before' must be an event number" in text(answer)


def test_the_audit_pages_export_link_carries_the_filter_encoded(small_site):
    value = "a&fmt=jsonl#x y"
    page = get(small_site, "auditor", "/audit", params={"actor": value})
    link = re.search(r'href="([^"]*/audit/export\?fmt=csv[^"]*)"', page.text).group(1)
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(html.unescape(link)).query)
    assert query == {"fmt": ["csv"], "actor": [value]}
