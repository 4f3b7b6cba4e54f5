"""Routes for researchers: file export requests, follow them, withdraw, resubmit, accept the
safe version of a failing table, download."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from spe.api.deps import CallerDep, acting, reading
from spe.api.schemas import (
    AcceptSafeIn,
    CommentIn,
    Filed,
    FileRequestIn,
    RequestDetail,
    RequestSummary,
    ResubmitIn,
    SafePreview,
    WithdrawIn,
)
from spe.exports import actions
from spe.projects.service import get_project

router = APIRouter(tags=["researcher"])


def _dispatch(job_id: str) -> tuple[bool, str | None]:
    """Send the check job once the request is committed; an unreachable broker is a note."""
    from spe.tasks import BrokerError, dispatch

    try:
        dispatch(job_id)
    except BrokerError as exc:
        return False, exc.message
    return True, None


@router.post("/projects/{project}/exports", response_model=Filed, status_code=202)
def file_request(project: str, body: FileRequestIn, who: CallerDep) -> Filed:
    """File an export request with files from your workspace's outbox of this project.

    The files are copied and frozen at once; the check runs on a worker (202 Accepted).
    """
    wanted = [actions.OutputRequest(o.name, o.justification) for o in body.outputs]
    with acting(who) as (session, user):
        row = get_project(session, project)
        request, job_id = actions.file_request(session, user, row, wanted, body.title)
        summary = actions.summary(request, row)
    sent, note = _dispatch(job_id)
    return Filed(request=RequestSummary(**summary), check_job=job_id, dispatched=sent, note=note)


@router.get("/exports", response_model=list[RequestSummary])
def my_requests(who: CallerDep, project: str | None = None) -> list[RequestSummary]:
    """Your export requests, newest first."""
    with reading(who) as (session, user):
        scope = get_project(session, project) if project else None
        return [RequestSummary(**r) for r in actions.list_requests(session, user, scope)]


@router.get("/exports/{request_id}", response_model=RequestDetail)
def request_detail(request_id: str, who: CallerDep) -> RequestDetail:
    """One request: each output's check with the reasons per failing cell, votes, comments."""
    with reading(who) as (session, user):
        request = actions.get_request(session, request_id)
        return RequestDetail(**actions.detail(session, user, request))


@router.post("/exports/{request_id}/withdraw", response_model=RequestSummary)
def withdraw(request_id: str, body: WithdrawIn, who: CallerDep) -> RequestSummary:
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.withdraw(session, user, request, body.reason)
        return RequestSummary(**actions.summary(request, actions.project_of(session, request)))


@router.post("/exports/{request_id}/resubmit", response_model=Filed, status_code=202)
def resubmit(request_id: str, body: ResubmitIn, who: CallerDep) -> Filed:
    """Send changed outputs after the reviewers asked for changes (a new round)."""
    wanted = [actions.OutputRequest(o.name, o.justification) for o in body.outputs]
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        job_id = actions.resubmit(session, user, request, wanted, body.note)
        summary = actions.summary(request, actions.project_of(session, request))
    sent, note = _dispatch(job_id)
    return Filed(request=RequestSummary(**summary), check_job=job_id, dispatched=sent, note=note)


@router.post("/exports/{request_id}/comments", status_code=201)
def comment(request_id: str, body: CommentIn, who: CallerDep) -> dict[str, str]:
    """Reply to the reviewers (researchers' comments are always shared)."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.comment(session, user, request, body.body, body.visibility, body.output)
    return {"status": "added"}


@router.get(
    "/exports/{request_id}/bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def download(request_id: str, who: CallerDep) -> FileResponse:
    """The signed release bundle (the author only; the download is audited)."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        path = actions.download(session, user, request)
        name = f"release-{str(request.id)[:8]}.zip"
    return FileResponse(path, media_type="application/zip", filename=name)


@router.get("/exports/{request_id}/outputs/{output}/safe-version", response_model=SafePreview)
def safe_preview(
    request_id: str, output: str, who: CallerDep, method: str = "suppress"
) -> SafePreview:
    """The safe version of a failing table as the server computes it, and its verdict."""
    with reading(who) as (session, user):
        request = actions.get_request(session, request_id)
        return SafePreview(**actions.safe_preview(session, user, request, output, method))


@router.post(
    "/exports/{request_id}/outputs/{output}/accept-safe", response_model=Filed, status_code=202
)
def accept_safe(request_id: str, output: str, body: AcceptSafeIn, who: CallerDep) -> Filed:
    """Replace a failing table by its safe version, computed on the server (a new round, checked
    again; 202 Accepted)."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        job_id = actions.accept_safe_version(session, user, request, output, body.method)
        summary = actions.summary(request, actions.project_of(session, request))
    sent, note = _dispatch(job_id)
    return Filed(request=RequestSummary(**summary), check_job=job_id, dispatched=sent, note=note)
