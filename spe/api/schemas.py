"""The shapes of API bodies (pydantic), so the OpenAPI document describes every field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class OutputIn(BaseModel):
    name: str = Field(description="A file name in the workspace's outbox, e.g. 'table.csv'.")
    justification: str = Field(description="Why this output is needed.")


class FileRequestIn(BaseModel):
    title: str = Field(default="", description="A short title for the request.")
    outputs: list[OutputIn] = Field(description="The outputs to export, each with its reason.")


class ResubmitIn(BaseModel):
    outputs: list[OutputIn]
    note: str = Field(default="", description="What changed since the last round.")


class WithdrawIn(BaseModel):
    reason: str = ""


class CommentIn(BaseModel):
    body: str
    output: str | None = Field(default=None, description="The output the comment is about.")
    visibility: Literal["shared", "reviewers"] = Field(
        default="shared",
        description="'shared': the researcher sees it; 'reviewers': reviewers only.",
    )


class VoteIn(BaseModel):
    output: str
    vote: Literal["approve", "request_changes", "reject"]
    comment: str = Field(description="Why; the researcher reads it.")


class RevokeIn(BaseModel):
    reason: str = Field(description="Why the release is taken back; the researcher is told.")


class RequestSummary(BaseModel):
    id: str
    project: str | None
    title: str
    author: str
    status: str
    round: int
    submitted_at: str
    age_days: float
    overdue: bool
    auto_released: bool
    outputs: list[str]
    revoke_reason: str | None = None


class Filed(BaseModel):
    request: RequestSummary
    check_job: str
    dispatched: bool
    note: str | None = None


class RequestDetail(RequestSummary):
    outputs: list[dict[str, Any]] = Field(  # type: ignore[assignment]
        description="Each output with its check status, reasons, per-cell report and decision."
    )
    review: dict[str, Any]
    bundle_sha256: str | None = None
    viewer_is_reviewer: bool


class AcceptSafeIn(BaseModel):
    method: Literal["suppress", "round"] = Field(
        default="suppress",
        description="'suppress': failing cells left out, with cells that protect them; "
        "'round': counts rounded to multiples of 5 (tables of counts only).",
    )


class SafePreview(BaseModel):
    request: str
    round: int
    output: str
    command: str
    method: str
    index_names: list[str]
    column_names: list[str]
    columns: list[list[str]] = Field(
        description="Each column's label, one part per column dimension, as the CSV writes it."
    )
    rows: list[dict[str, Any]] = Field(
        description="Per row: its labels, and its cells (value as text or null, suppressed, "
        "rounded)."
    )
    suppressed_cells: int
    rounded_cells: int
    changes: list[dict[str, Any]] = Field(description="What was done to each cell, and why.")
    status: str = Field(description="The server check's verdict on the safe version.")
    reasons: list[str]
    file_sha256: str
    csv: str
    can_accept: bool
    cannot_accept: str | None = None


class MemberIn(BaseModel):
    username: str = Field(description="The researcher to add to the project.")


class MemberDecisionIn(BaseModel):
    note: str = Field(default="", description="A note on the approval (kept in the audit log).")


class MemberRefusalIn(BaseModel):
    reason: str = Field(description="Why the person is refused; the project's lead sees it.")


class MemberRow(BaseModel):
    username: str
    role: str
    status: Literal["member", "pending", "refused", "withdrawn"] = Field(
        description="'pending': waiting for the data holder's reviewers, no workspace or data yet."
    )
    by: str | None = Field(default=None, description="Who asked (pending) or decided.")
    reason: str | None = Field(default=None, description="The holder's reason or note.")
    holder: str | None = Field(default=None, description="The data holder who decides.")
