"""Routes for the data holder's reviewers: the queue, a request with its per-cell report, the
frozen files, votes, comments, the decision and revocation."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from spe.api.deps import CallerDep, acting, reading
from spe.api.schemas import CommentIn, RequestDetail, RequestSummary, RevokeIn, VoteIn
from spe.exports import actions

router = APIRouter(prefix="/review", tags=["reviewer"])


@router.get("/queue", response_model=list[RequestSummary])
def queue(who: CallerDep, overdue: bool = False) -> list[RequestSummary]:
    """Requests waiting for your review (never your own), oldest first, with age and overdue."""
    with reading(who) as (session, user):
        rows = actions.review_queue(session, user, overdue_only=overdue)
    return [RequestSummary(**r) for r in rows]


@router.get("/{request_id}", response_model=RequestDetail)
def request_detail(request_id: str, who: CallerDep) -> RequestDetail:
    """A request with every output's check: failing cells with the rule and the numbers."""
    with reading(who) as (session, user):
        request = actions.get_request(session, request_id)
        return RequestDetail(**actions.detail(session, user, request))


@router.get("/{request_id}/outputs/{name}", response_class=FileResponse)
def output_file(request_id: str, name: str, who: CallerDep) -> FileResponse:
    """The frozen output file, as it would be released."""
    with reading(who) as (session, user):
        request = actions.get_request(session, request_id)
        path, media_type = actions.output_file(session, user, request, name)
    return FileResponse(path, media_type=media_type)


@router.post("/{request_id}/votes", status_code=201)
def vote(request_id: str, body: VoteIn, who: CallerDep) -> dict[str, object]:
    """Approve, request changes or reject one output, with a comment."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.vote(session, user, request, body.output, body.vote, body.comment)
        pending = actions.pending_decisions(session, request)
    return {"status": "recorded", "decisions": {k: str(v) for k, v in pending.items()}}


@router.post("/{request_id}/comments", status_code=201)
def comment(request_id: str, body: CommentIn, who: CallerDep) -> dict[str, str]:
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.comment(session, user, request, body.body, body.visibility, body.output)
    return {"status": "added"}


@router.post("/{request_id}/decide", response_model=RequestSummary)
def decide(request_id: str, who: CallerDep) -> RequestSummary:
    """Close the round: release approved outputs, or return or reject the request."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.decide(session, user, request)
        return RequestSummary(**actions.summary(request, actions.project_of(session, request)))


@router.post("/{request_id}/revoke", response_model=RequestSummary)
def revoke(request_id: str, body: RevokeIn, who: CallerDep) -> RequestSummary:
    """Take a release back, with the reason the researcher is told."""
    with acting(who) as (session, user):
        request = actions.get_request(session, request_id)
        actions.revoke(session, user, request, body.reason)
        return RequestSummary(**actions.summary(request, actions.project_of(session, request)))
