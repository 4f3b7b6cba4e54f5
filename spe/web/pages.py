"""Every page of every role. Each handler asks the capability functions (the same ones the API
and the CLI call), which check permissions and state, and renders what they return; a refusal
is shown as the sentence it carries.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TextIO, cast
from urllib.parse import urlencode

from fastapi import Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from spe.accounts.models import Organisation, Role, User
from spe.errors import NotFound, PermissionDenied
from spe.web import auth
from spe.web.app import (
    PREFIX,
    Viewer,
    acting_as,
    done,
    page,
    reading_as,
    signed_in,
    url,
    viewer_of,
    web_router,
    who,
)
from spe.web.render import checked_table

FormText = Annotated[str, Form()]
Token = Annotated[str | None, Form(alias=auth.CSRF_FIELD)]


def _org_ids(user: User, role: Role) -> list[Any]:
    return [g.organisation_id for g in user.roles if g.role == role and g.organisation_id]


def _orgs(session: Any, user: User, role: Role) -> list[Organisation]:
    """The organisations for which ``user`` holds ``role``."""
    return [session.get(Organisation, org_id) for org_id in _org_ids(user, role)]


def _refuse_unless(allowed: bool, sentence: str) -> None:
    if not allowed:
        raise PermissionDenied(sentence)


# --- login --------------------------------------------------------------------------------------


@web_router.get("/login")
async def login(request: Request, next: str = PREFIX + "/") -> Response:
    return auth.start_login(request, PREFIX, next)


@web_router.get("/oauth_callback")
async def oauth_callback(request: Request, code: str = "", state: str = "") -> Response:
    return await auth.finish_login(request, PREFIX, code, state)


@web_router.get("/logout")
async def logout(request: Request) -> Response:
    """End this browser's login to the pages (audited), then the hub's (its cookie and the
    OAuth tokens of its session)."""
    from spe.accounts.sessions import end_session
    from spe.db import transaction

    token = request.cookies.get(auth.SESSION_COOKIE)
    if token:
        with transaction() as session:
            end_session(session, token, _source(request))
    response = RedirectResponse("/hub/logout", 302)
    response.delete_cookie(auth.SESSION_COOKIE, path=auth.cookie_path(PREFIX))
    response.delete_cookie(auth.CSRF_COOKIE, path=auth.cookie_path(PREFIX))
    return response


def _source(request: Request) -> str:
    return f"pages from {request.client.host if request.client else 'unknown'}"


# --- own password ---------------------------------------------------------------------------


@web_router.get("/password")
async def password_page(request: Request) -> Response:
    """Set a password after a one-time login, or change it with the current one."""
    from spe.accounts.service import get_user
    from spe.config import get_settings
    from spe.db import readonly

    name = require_name(await who(request))
    with readonly() as session:
        user = get_user(session, name)
        first = user.must_change_password
        viewer = None if first else viewer_of(user)
    return page(
        request,
        "password.html",
        viewer,
        first=first,
        username=name,
        min_length=get_settings().password_min_length,
        problem=None,
    )


@web_router.post("/password")
async def password_set(
    request: Request,
    new: FormText,
    repeat: FormText,
    current: FormText = "",
    csrf: Token = None,
) -> Response:
    from spe.accounts.password_rules import PasswordRejected
    from spe.accounts.service import change_password, get_user, set_first_password
    from spe.accounts.sessions import session_started_at
    from spe.db import transaction

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    if new != repeat:
        raise PasswordRejected("The two new passwords differ; type the same one twice.")
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    started = session_started_at(cookie) if cookie else None
    with transaction() as session:
        user = get_user(session, name)
        if user.must_change_password:
            set_first_password(session, user, new, started)
        else:
            change_password(session, user, current, new)
    # Every login of the account has ended, this one too: log in again with the new password.
    response = done("/hub/logout", "Your password is set; log in with it.")
    response.delete_cookie(auth.SESSION_COOKIE, path=auth.cookie_path(PREFIX))
    return response


# --- own second factor (MFA) -----------------------------------------------------------------


@web_router.get("/mfa")
async def mfa_page(request: Request) -> Response:
    """Set up two-step login (a QR code and the secret, confirmed with a current code), or see
    that it is on. Open to a login that must set it up before anything else."""
    from spe.accounts import mfa
    from spe.accounts.service import get_user
    from spe.db import transaction

    name = require_name(await who(request))
    with transaction() as session:
        user = get_user(session, name)
        if user.must_change_password:
            raise auth.PasswordRequired(
                "You logged in with a one-time password; set your own password first."
            )
        viewer = None if mfa.must_enrol(session, user) else viewer_of(user)
        if mfa.enrolled(session, user):
            context: dict[str, Any] = {
                "enrolled": True,
                "codes_left": mfa.recovery_codes_left(session, user),
            }
        else:
            enrolment = mfa.start_enrolment(session, user)
            context = {
                "enrolled": False,
                "required": mfa.required(user),
                "qr": mfa.qr_svg(enrolment.uri),
                "secret_grouped": " ".join(
                    enrolment.secret[i : i + 4] for i in range(0, len(enrolment.secret), 4)
                ),
            }
    return page(request, "mfa.html", viewer, **context)


@web_router.post("/mfa")
async def mfa_confirm(request: Request, code: FormText, csrf: Token = None) -> Response:
    from spe.accounts import mfa
    from spe.accounts.service import get_user
    from spe.accounts.sessions import start_session
    from spe.db import transaction

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    with transaction() as session:
        user = get_user(session, name)
        codes = mfa.confirm_enrolment(session, user, code)
        # Every login of the account ended; this browser, which just gave a code, goes on
        # with a new one (the hub asks for the code at its next login).
        fresh = start_session(session, user, _source(request))
        viewer = viewer_of(user)
    # The recovery codes are shown once, on this response only (never in a redirect).
    response = page(request, "mfa_codes.html", viewer, codes=codes)
    auth.set_session_cookie(request, response, PREFIX, fresh)
    return response


# --- home and the public catalogue (DGA Art. 8: no login) ----------------------------------


def _hub_login_first(request: Request, name: str | None) -> Response | None:
    """A visitor already logged in at the hub is logged in here too (a quick OAuth round)."""
    if name is None and auth.logged_in_at_hub(request) and auth.hub_oauth() is not None:
        return RedirectResponse(url(f"/login?next={request.url.path}"), 302)
    return None


@web_router.get("/")
async def home(request: Request) -> Response:
    from spe.catalogue.service import list_datasets

    name = await who(request)
    if (redirect := _hub_login_first(request, name)) is not None:
        return redirect
    with reading_as(name) as (session, user):
        viewer = viewer_of(user) if user else None
        datasets = list_datasets(session)
        cards: list[dict[str, Any]] = []
        if user is not None:
            cards = _home_cards(session, user, viewer)  # type: ignore[arg-type]
    return page(request, "home.html", viewer, datasets=datasets, cards=cards)


def _home_cards(session: Any, user: User, viewer: Viewer) -> list[dict[str, Any]]:
    """What waits for this person, per role, as a few counts with links."""
    from spe.exports import actions
    from spe.projects.service import projects_of_member

    cards = []
    if viewer.is_researcher:
        mine = actions.list_requests(session, user)
        waiting = [r for r in mine if r["status"] in ("changes_requested", "released")]
        cards.append(
            {
                "title": "Research",
                "lines": [
                    (f"{len(projects_of_member(session, user))} projects", url("/projects")),
                    (f"{len(mine)} export requests, {len(waiting)} for you", url("/exports")),
                ],
            }
        )
    if viewer.is_holder:
        queue = actions.review_queue(session, user)
        overdue = sum(1 for r in queue if r["overdue"])
        cards.append(
            {
                "title": "Data holder",
                "lines": [
                    (f"{len(queue)} requests to review, {overdue} overdue", url("/review")),
                    ("Datasets and ingest reports", url("/holder/datasets")),
                    ("Projects and grants", url("/holder/projects")),
                ],
            }
        )
    if viewer.is_auditor:
        cards.append({"title": "Audit", "lines": [("The access log", url("/audit"))]})
    if viewer.is_admin:
        cards.append({"title": "Institution", "lines": [("Researchers", url("/admin"))]})
    return cards


@web_router.get("/catalogue")
async def catalogue(request: Request) -> Response:
    from spe.catalogue.service import describe, list_datasets

    name = await who(request)
    if (redirect := _hub_login_first(request, name)) is not None:
        return redirect
    with reading_as(name) as (session, user):
        entries = [describe(d) for d in list_datasets(session)]
        viewer = viewer_of(user) if user else None
    return page(request, "catalogue.html", viewer, entries=entries)


@web_router.get("/catalogue/{dataset}")
async def catalogue_entry(request: Request, dataset: str) -> Response:
    from spe.catalogue.service import describe, get_dataset

    name = await who(request)
    with reading_as(name) as (session, user):
        entry = describe(get_dataset(session, dataset))
        budget = None
        if entry.get("access") == "aggregate_only":
            from spe.dp.service import dataset_budget

            budget = dataset_budget(session, entry["name"])  # epsilon only, nothing of the data
        viewer = viewer_of(user) if user else None
    return page(request, "dataset.html", viewer, d=entry, budget=budget)


# --- researchers ------------------------------------------------------------------------------


def _budgets(session: Any, user: User, project: Any) -> list[dict[str, Any]] | None:
    """The project's privacy budgets (aggregate-only datasets), or None if not the viewer's."""
    from spe.dp import service as dp_service

    try:
        return list(dp_service.budgets(session, user, project))
    except (PermissionDenied, NotFound):
        return None


@web_router.get("/projects")
async def my_projects(request: Request) -> Response:
    from spe.accounts.permissions import Action, Target, can
    from spe.projects.extracts import grants_of
    from spe.projects.service import awaiting_approval, membership, projects_of_member
    from spe.projects.states import is_open_for_work

    with signed_in(await who(request)) as (session, user, viewer):
        rows = [
            {
                "project": p,
                "grants": grants_of(session, p),
                "open": is_open_for_work(p),
                "budgets": _budgets(session, user, p),
                "members": membership(session, user, p),
                "may_change_members": p.status.value != "closed"
                and can(session, user, Action.PROJECT_MEMBER_ADD, Target(project=p)),
            }
            for p in projects_of_member(session, user)
        ]
        from spe.accounts.permissions import terms_accepted

        accepted = terms_accepted(session, user)
        waiting = awaiting_approval(session, user)
        # Rendered inside the transaction: the rows are database objects.
        return page(
            request, "projects.html", viewer, rows=rows, terms_accepted=accepted, waiting=waiting
        )


@web_router.post("/projects/{slug}/members")
async def project_member_add(
    request: Request, slug: str, username: FormText, csrf: Token = None
) -> Response:
    """The lead adds a researcher; after approval they wait for the data holder."""
    from spe.accounts.service import get_user
    from spe.projects.models import ProjectMemberRequest
    from spe.projects.service import add_member, get_project

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        project = get_project(session, slug)
        added = add_member(session, user, project, get_user(session, username.strip()))
        holder = project.holder.name
    if isinstance(added, ProjectMemberRequest):
        message = (
            f"Added {username} to {slug}, pending approval by {holder}: no workspace and no "
            "data until they approve."
        )
    else:
        message = f"Added {username} to {slug}."
    return done(url("/projects"), message)


@web_router.post("/projects/{slug}/members/{username}/remove")
async def project_member_remove(
    request: Request, slug: str, username: str, back: FormText = "", csrf: Token = None
) -> Response:
    """Removal is immediate (a person still waiting for the holder is withdrawn)."""
    from spe.accounts.service import get_user
    from spe.projects.service import get_project, remove_member

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        remove_member(session, user, get_project(session, slug), get_user(session, username))
    to = f"/holder/projects/{slug}" if back == "holder" else "/projects"
    return done(url(to), f"Removed {username} from {slug}.")


@web_router.get("/terms")
async def terms(request: Request) -> Response:
    from spe.accounts.permissions import terms_accepted
    from spe.accounts.terms import current_terms

    with signed_in(await who(request)) as (session, user, viewer):
        accepted = terms_accepted(session, user)
    current = current_terms()
    return page(request, "terms.html", viewer, terms=current, accepted=accepted)


@web_router.post("/terms/accept")
async def terms_accept(request: Request, csrf: Token = None) -> Response:
    from spe.accounts.service import accept_terms

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        version = accept_terms(session, user)
    return done(url("/projects"), f"You accepted the terms of use ({version}).")


def require_name(name: str | None) -> str:
    if name is None:
        raise auth.LoginRequired("Log in to do this.")
    return name


@web_router.get("/exports")
async def my_exports(request: Request) -> Response:
    from spe.exports import actions

    with signed_in(await who(request)) as (session, user, viewer):
        requests = actions.list_requests(session, user)
    return page(request, "exports.html", viewer, requests=requests)


@web_router.get("/exports/{request_id}")
async def export_detail(request: Request, request_id: str) -> Response:
    from spe.exports import actions

    with signed_in(await who(request)) as (session, user, viewer):
        req = actions.get_request(session, request_id)
        data = actions.detail(session, user, req)
        is_author = req.author == user.username
    for i, out in enumerate(data["outputs"]):
        summary = out["report"].get("summary") or {}
        caption = f"{out['name']}: each cell with its verdict" + (
            f" ({summary.get('fail', 0)} fail, {summary.get('review', 0)} review, "
            f"{summary.get('pass', 0)} pass)"
            if summary
            else ""
        )
        out["grid"] = (
            checked_table(out["report"], str(i + 1), caption) if out["kind"] == "table" else None
        )
        out["image"] = next(
            (
                f
                for f in out["files"]
                if f["role"] == "output" and f["media_type"].startswith("image/")
            ),
            None,
        )
    return page(request, "export.html", viewer, r=data, is_author=is_author)


@web_router.get("/exports/{request_id}/outputs/{output}/file")
async def export_output_file(request: Request, request_id: str, output: str) -> Response:
    """An output's frozen file, shown inline (pictures on the review page; CSV as text)."""
    from spe.exports import actions

    with signed_in(await who(request)) as (session, user, _viewer):
        path, media_type = actions.output_file(
            session, user, actions.get_request(session, request_id), output
        )
    shown = media_type if media_type.startswith("image/") else "text/plain; charset=utf-8"
    return FileResponse(
        path,
        media_type=shown,
        headers={
            "Content-Disposition": "inline",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "no-store",
        },
    )


@web_router.get("/exports/{request_id}/bundle")
async def export_bundle(request: Request, request_id: str) -> Response:
    """The signed release bundle, for its author (the download is audited)."""
    from spe.exports import actions

    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        path = actions.download(session, user, actions.get_request(session, request_id))
    return FileResponse(
        path, media_type="application/zip", filename=f"spe-release-{request_id[:8]}.zip"
    )


def _dispatch(job_id: str) -> str:
    """Send a check job once its transaction is committed; an unreachable broker is a note."""
    from spe.tasks import BrokerError, dispatch

    try:
        dispatch(job_id)
    except BrokerError as exc:
        return " " + exc.message
    return ""


@web_router.post("/exports/{request_id}/withdraw")
async def export_withdraw(
    request: Request, request_id: str, reason: FormText = "", csrf: Token = None
) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        actions.withdraw(session, user, actions.get_request(session, request_id), reason)
    return done(url(f"/exports/{request_id}"), "You withdrew the request.")


@web_router.get("/exports/{request_id}/outputs/{output}/safe-version")
async def export_safe_preview(
    request: Request, request_id: str, output: str, method: str = "suppress"
) -> Response:
    """What the safe version would publish and the check's verdict on it, before accepting."""
    from spe.exports import actions

    with signed_in(await who(request)) as (session, user, viewer):
        preview = actions.safe_preview(
            session, user, actions.get_request(session, request_id), output, method
        )
    return page(request, "safe.html", viewer, p=preview, rid=request_id)


@web_router.post("/exports/{request_id}/outputs/{output}/accept-safe")
async def export_accept_safe(
    request: Request,
    request_id: str,
    output: str,
    method: FormText = "suppress",
    csrf: Token = None,
) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        job_id = actions.accept_safe_version(
            session, user, actions.get_request(session, request_id), output, method
        )
    note = _dispatch(job_id)
    return done(
        url(f"/exports/{request_id}"),
        f"The safe version of {output} replaces it; the request is being checked again.{note}",
    )


@web_router.post("/exports/{request_id}/comment")
async def export_comment(
    request: Request,
    request_id: str,
    body: FormText,
    private: FormText = "",
    csrf: Token = None,
) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        actions.comment(
            session,
            user,
            actions.get_request(session, request_id),
            body,
            "reviewers" if private else "shared",
        )
    return done(url(f"/exports/{request_id}"), "Your comment is added.")


# --- reviewers ---------------------------------------------------------------------------------


@web_router.get("/review")
async def review_queue(request: Request) -> Response:
    from spe.exports import actions

    with signed_in(await who(request)) as (session, user, viewer):
        queue = actions.review_queue(session, user)
    return page(request, "queue.html", viewer, queue=queue)


@web_router.post("/exports/{request_id}/outputs/{output}/vote")
async def export_vote(
    request: Request,
    request_id: str,
    output: str,
    choice: FormText,
    comment: FormText = "",
    csrf: Token = None,
) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        actions.vote(
            session, user, actions.get_request(session, request_id), output, choice, comment
        )
    return done(url(f"/exports/{request_id}"), f"Your vote on {output} is recorded.")


@web_router.post("/exports/{request_id}/decide")
async def export_decide(request: Request, request_id: str, csrf: Token = None) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        status = actions.decide(session, user, actions.get_request(session, request_id))
    return done(
        url(f"/exports/{request_id}"), f"Decided: the request is {status.value.replace('_', ' ')}."
    )


@web_router.post("/exports/{request_id}/revoke")
async def export_revoke(
    request: Request, request_id: str, reason: FormText, csrf: Token = None
) -> Response:
    from spe.exports import actions

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        actions.revoke(session, user, actions.get_request(session, request_id), reason)
    return done(url(f"/exports/{request_id}"), "The release is revoked; the researcher sees why.")


# --- data holders ------------------------------------------------------------------------------


@web_router.get("/holder/datasets")
async def holder_datasets(request: Request) -> Response:
    from spe.catalogue.service import datasets_of_holder, ingest_reports

    with signed_in(await who(request)) as (session, user, viewer):
        _refuse_unless(viewer.is_holder, "Only a data holder's reviewers see its datasets here.")
        rows = [
            {"dataset": d, "reports": ingest_reports(d)}
            for d in datasets_of_holder(session, _org_ids(user, Role.HOLDER_REVIEWER))
        ]
        return page(request, "holder_datasets.html", viewer, rows=rows)


@web_router.get("/holder/projects")
async def holder_projects(request: Request) -> Response:
    from spe.projects.extracts import grants_of
    from spe.projects.service import projects_of_holder

    with signed_in(await who(request)) as (session, user, viewer):
        _refuse_unless(viewer.is_holder, "Only a data holder's reviewers see its projects here.")
        rows = [
            {"project": p, "grants": grants_of(session, p)}
            for p in projects_of_holder(session, _org_ids(user, Role.HOLDER_REVIEWER))
        ]
        return page(request, "holder_projects.html", viewer, rows=rows)


@web_router.get("/holder/projects/{slug}")
async def holder_project(request: Request, slug: str) -> Response:
    from spe.accounts.permissions import Action, Target, can
    from spe.catalogue.service import datasets_of_holder
    from spe.projects.extracts import generalisations_for, grants_of
    from spe.projects.service import get_project, membership

    with signed_in(await who(request)) as (session, user, viewer):
        project = get_project(session, slug)
        _refuse_unless(
            can(session, user, Action.PROJECT_GRANT, Target(project=project)),
            "Only a reviewer of the project's data holder sees its grants.",
        )
        datasets = [
            {
                "name": d.name,
                "variables": [
                    {"name": v.name, "generalisations": generalisations_for(v.type)}
                    for v in (d.latest.variables if d.latest else [])
                    if v.name != "person_id"
                ],
            }
            for d in datasets_of_holder(session, [project.holder_id])
        ]
        members = membership(session, user, project)
        grants = grants_of(session, project)
        may_approve = can(session, user, Action.PROJECT_APPROVE, Target(project=project))
        budgets = _budgets(session, user, project)
        return page(
            request,
            "holder_project.html",
            viewer,
            project=project,
            grants=grants,
            datasets=datasets,
            members=members,
            may_approve=may_approve,
            budgets=budgets,
        )


@web_router.post("/holder/projects/{slug}/grant")
async def holder_grant(
    request: Request,
    slug: str,
    dataset: FormText,
    variables: Annotated[list[str], Form()],
    csrf: Token = None,
) -> Response:
    from spe.projects.extracts import grant_dataset
    from spe.projects.models import ProjectStatus
    from spe.projects.service import get_project
    from spe.tasks import submit_and_dispatch

    auth.check_form_token(request, csrf)
    form = await request.form()
    generalise = {
        key.removeprefix("gen_"): str(value)
        for key, value in form.items()
        if key.startswith("gen_") and value and key.removeprefix("gen_") in variables
    }
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        project = get_project(session, slug)
        grant_dataset(session, user, project, dataset, variables, generalise)
        approved = project.status == ProjectStatus.APPROVED
    message = f"Granted {slug} {len(variables)} variables of {dataset}" + (
        " (generalised: " + ", ".join(f"{k} to {v}" for k, v in sorted(generalise.items())) + ")."
        if generalise
        else "."
    )
    if approved:  # an approved project's extract follows its grants
        job = submit_and_dispatch(name, "extract", {"project": slug, "dataset": dataset}, False)
        message += f" Its extract is being built (job {job[:8]})."
    return done(url(f"/holder/projects/{slug}"), message)


@web_router.post("/holder/projects/{slug}/topup")
async def holder_topup(
    request: Request, slug: str, dataset: FormText, epsilon: FormText, csrf: Token = None
) -> Response:
    """Add privacy budget (epsilon) for an aggregate-only dataset of the project."""
    from spe.dp import service as dp_service
    from spe.dp.errors import DPError

    auth.check_form_token(request, csrf)
    try:
        amount = float(epsilon)
    except ValueError:
        raise DPError(f"{epsilon!r} is not a number; give the epsilon to add, e.g. 0.5.") from None
    with acting_as(require_name(await who(request))) as (session, user):
        after = dp_service.topup(session, user, slug, dataset, amount)
    return done(
        url(f"/holder/projects/{slug}"),
        f"Added ε {amount:g} to {dataset}; "
        f"{after['remaining']:.3g} of {after['total']:.3g} remain.",
    )


@web_router.post("/holder/projects/{slug}/approve")
async def holder_approve(
    request: Request, slug: str, note: FormText = "", csrf: Token = None
) -> Response:
    from spe.projects.extracts import granted_datasets
    from spe.projects.service import approve_project, get_project
    from spe.tasks import submit_and_dispatch

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        project = get_project(session, slug)
        approve_project(session, user, project, note)
        names = granted_datasets(session, project)
    for dataset in names:
        submit_and_dispatch(name, "extract", {"project": slug, "dataset": dataset}, False)
    return done(
        url(f"/holder/projects/{slug}"),
        f"Approved {slug}; its extracts of {', '.join(names) or 'no dataset yet'} are being built.",
    )


@web_router.post("/holder/projects/{slug}/members/{username}/approve")
async def holder_member_approve(
    request: Request, slug: str, username: str, note: FormText = "", csrf: Token = None
) -> Response:
    """A reviewer of the data holder lets a person added after approval in."""
    from spe.accounts.service import get_user
    from spe.projects.service import approve_member, get_project

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        project = get_project(session, slug)
        approve_member(session, user, project, get_user(session, username), note)
    return done(
        url(f"/holder/projects/{slug}"),
        f"Approved {username} as a member of {slug}; they may now open its workspace.",
    )


@web_router.post("/holder/projects/{slug}/members/{username}/refuse")
async def holder_member_refuse(
    request: Request, slug: str, username: str, reason: FormText = "", csrf: Token = None
) -> Response:
    """A reviewer of the data holder refuses a person added after approval, with a reason."""
    from spe.accounts.service import get_user
    from spe.projects.service import get_project, refuse_member

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        project = get_project(session, slug)
        refuse_member(session, user, project, get_user(session, username), reason)
    return done(
        url(f"/holder/projects/{slug}"),
        f"Refused {username} in {slug}; the project's lead sees your reason.",
    )


def _filters(
    actor: str, project: str, dataset: str, action: str, since: str, until: str
) -> tuple[Any, dict[str, str]]:
    from spe.audit.query import EventFilter, parse_time

    given = {
        k: v.strip()
        for k, v in {
            "actor": actor,
            "project": project,
            "dataset": dataset,
            "action": action,
            "since": since,
            "until": until,
        }.items()
        if v and v.strip()
    }
    filt = EventFilter(
        since=parse_time(given["since"], "since") if "since" in given else None,
        until=parse_time(given["until"], "until") if "until" in given else None,
        actor=given.get("actor"),
        project=given.get("project"),
        dataset=given.get("dataset"),
        action=given.get("action"),
    )
    return filt, given


@web_router.get("/holder/access")
async def holder_access(
    request: Request,
    actor: str = "",
    project: str = "",
    dataset: str = "",
    action: str = "",
    since: str = "",
    until: str = "",
    before: Annotated[int | None, Query()] = None,
) -> Response:
    """Who touched my data: every event about the holder's datasets or their projects."""
    from spe.accounts.permissions import Action, Target, check_can
    from spe.audit.browse import page_events
    from spe.catalogue.service import datasets_of_holder
    from spe.projects.service import projects_of_holder

    filt, given = _filters(actor, project, dataset, action, since, until)
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        viewer = viewer_of(user)
        orgs = _org_ids(user, Role.HOLDER_REVIEWER)
        _refuse_unless(bool(orgs), "Only a data holder's reviewers see who used its data.")
        for org in _orgs(session, user, Role.HOLDER_REVIEWER):
            check_can(session, user, Action.DATASET_ACCESS_LOG, Target(organisation=org))
        datasets = [d.name for d in datasets_of_holder(session, orgs)]
        projects = [p.slug for p in projects_of_holder(session, orgs)]
        events = page_events(session, filt, before=before, datasets=datasets, projects=projects)
        from spe.audit import record

        record(session, user, "audit.browse", "audit-log", {"scope": "holder", **given})
    return page(
        request,
        "access.html",
        viewer,
        page_=events,
        given=given,
        datasets=datasets,
        projects=projects,
        base=url("/holder/access"),
    )


# --- auditors -----------------------------------------------------------------------------------


@web_router.get("/audit")
async def audit_log(
    request: Request,
    actor: str = "",
    project: str = "",
    dataset: str = "",
    action: str = "",
    since: str = "",
    until: str = "",
    before: Annotated[int | None, Query()] = None,
    limit: Annotated[int, Query(ge=10, le=500)] = 50,
) -> Response:
    from spe.accounts.permissions import Action, check_can
    from spe.audit import record
    from spe.audit.browse import log_state, page_events

    filt, given = _filters(actor, project, dataset, action, since, until)
    name = require_name(await who(request))
    # Reading the log is itself logged (as `spe audit tail` is), in the same transaction.
    with acting_as(name) as (session, user):
        viewer = viewer_of(user)
        check_can(session, user, Action.AUDIT_READ)
        events = page_events(session, filt, before=before, limit=limit)
        state = log_state(session)
        record(session, user, "audit.browse", "audit-log", {**given, "before": before})
    if limit != 50:
        given["limit"] = str(limit)  # kept by the pager's links
    # Encoded, so the export holds exactly the events shown ('&' or '#' in a filter value).
    export_query = urlencode({k: v for k, v in given.items() if k != "limit"})
    return page(
        request,
        "audit.html",
        viewer,
        page_=events,
        given=given,
        state=state,
        base=url("/audit"),
        export_query=export_query,
    )


@web_router.post("/audit/verify")
async def audit_verify(request: Request, csrf: Token = None) -> Response:
    """Re-hash the whole log and check every signed checkpoint (``spe audit verify``)."""
    from spe.accounts.permissions import Action, check_can
    from spe.audit import record
    from spe.audit.verify import load_external_checkpoints, verify_log
    from spe.config import get_settings
    from spe.db.session import get_engine
    from spe.keys.signing import audit_public_key

    auth.check_form_token(request, csrf)
    name = require_name(await who(request))
    settings = get_settings()
    with acting_as(name) as (session, user):
        viewer = viewer_of(user)
        check_can(session, user, Action.AUDIT_VERIFY)
        public = audit_public_key(session)
        record(session, user, "audit.verify", "audit-log", {"via": "pages"})
    checkpoints = settings.checkpoint_file
    external = (
        load_external_checkpoints(checkpoints) if checkpoints and checkpoints.exists() else None
    )
    report = verify_log(get_engine(), public, external, settings.seal_interval_seconds)
    return page(request, "verify.html", viewer, report=report.to_json(), public_key=public)


@web_router.get("/audit/export")
async def audit_export(
    request: Request,
    fmt: str = "csv",
    actor: str = "",
    project: str = "",
    dataset: str = "",
    action: str = "",
    since: str = "",
    until: str = "",
) -> Response:
    """The filtered log as CSV or JSON lines, streamed (the export is itself logged)."""
    import tempfile

    from spe.accounts.permissions import Action, check_can
    from spe.audit import record
    from spe.audit.log import AuditError
    from spe.audit.query import export_events
    from spe.db import readonly

    if fmt not in ("csv", "jsonl"):
        raise AuditError(f"Unknown export format {fmt!r}; use csv or jsonl.")
    filt, given = _filters(actor, project, dataset, action, since, until)
    name = require_name(await who(request))
    with acting_as(name) as (session, user):
        check_can(session, user, Action.AUDIT_READ)
        record(session, user, "audit.export", "audit-log", {"format": fmt, **given})

    # Written to a spooled file first (memory up to 8 MiB, then disk), so that a database
    # error is a page, not a truncated download.
    spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by the stream when sent
        max_size=8 << 20, mode="w+", encoding="utf-8"
    )
    with readonly() as session:
        export_events(session, filt, fmt, cast(TextIO, spool))
    spool.seek(0)

    def stream() -> Any:
        with spool:
            while chunk := spool.read(1 << 16):
                yield chunk

    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(
        stream(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="spe-audit.{fmt}"'},
    )


# --- institution admins -------------------------------------------------------------------------


@web_router.get("/admin")
async def admin(request: Request) -> Response:
    from spe.accounts.service import terms_status

    with signed_in(await who(request)) as (session, user, viewer):
        _refuse_unless(viewer.is_admin, "Only an institution admin manages its researchers.")
        institutions = [
            {"name": org.name, "people": _people(session, user, org, terms_status)}
            for org in _orgs(session, user, Role.INSTITUTION_ADMIN)
        ]
    return page(request, "admin.html", viewer, institutions=institutions, new_password=None)


def _people(
    session: Any, actor: User, organisation: Any, terms_status: Any
) -> list[dict[str, Any]]:
    from spe.accounts.mfa import enrolled
    from spe.accounts.service import get_user

    out = []
    for username, accepted in terms_status(session, actor, organisation):
        person = get_user(session, username)
        out.append(
            {
                "username": username,
                "full_name": person.full_name,
                "accepted": accepted,
                "roles": sorted(g.role.value for g in person.roles),
                "last_active": person.last_active_at,
                "mfa": enrolled(session, person),
            }
        )
    return out


@web_router.post("/admin/enrol")
async def admin_enrol(
    request: Request,
    username: FormText,
    full_name: FormText = "",
    email: FormText = "",
    institution: FormText = "",
    csrf: Token = None,
) -> Response:
    from spe.accounts.service import enrol_researcher, get_organisation

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        viewer = viewer_of(user)
        names = [org.name for org in _orgs(session, user, Role.INSTITUTION_ADMIN)]
        _refuse_unless(bool(names), "Only an institution admin enrols researchers.")
        org = get_organisation(session, institution or names[0])
        person, password = enrol_researcher(
            session, user, org, username.strip(), full_name.strip(), email.strip()
        )
        enrolled = person.username
    # The one-time password is shown once, on this response only (never in a redirect).
    response = page(
        request,
        "enrolled.html",
        viewer,
        username=enrolled,
        password=password,
        institution=org.name,
    )
    return response


@web_router.post("/admin/remove")
async def admin_remove(
    request: Request, username: FormText, reason: FormText, csrf: Token = None
) -> Response:
    from spe.accounts.service import get_user, remove_researcher

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        person = get_user(session, username)
        remove_researcher(session, user, person, reason)
    return done(
        url("/admin"), f"Removed {username}: the researcher role and the account are closed."
    )


@web_router.post("/admin/mfa-reset")
async def admin_mfa_reset(
    request: Request, username: FormText, reason: FormText, csrf: Token = None
) -> Response:
    """An institution admin (or an operator) resets a person's two-step login: every login and
    API token of theirs ends, and they set it up again at their next login."""
    from spe.accounts.mfa import reset_mfa
    from spe.accounts.service import get_user

    auth.check_form_token(request, csrf)
    with acting_as(require_name(await who(request))) as (session, user):
        reset_mfa(session, user, get_user(session, username), reason)
    return done(
        url("/admin"),
        f"Reset the two-step login of {username}: their logins have ended; they set it up "
        "again at their next login.",
    )


def json_pretty(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)
