"""Everything that happens to an export request: filing, the server-side check, votes and
comments, the decision, release, withdrawal, resubmission, a failing table's safe version,
revocation and download.

Each action asks spe.exports.permissions who may and spe.exports.states what the status allows,
then changes the request and writes its audit event in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import User
from spe.audit.log import record, state_change
from spe.config import get_settings
from spe.db.base import utcnow
from spe.errors import NotFound, SPEError
from spe.exports import permissions as perms
from spe.exports.checking import (
    DP,
    DP_SUFFIX,
    MAX_PLAN_BYTES,
    PLAN_SUFFIX,
    SERVER,
    WORKSPACE,
    WORKSPACE_NOTICE,
    read_plan,
    validate_plan,
)
from spe.exports.errors import ExportError, ExportInputError, ExportStateError
from spe.exports.files import SIDECAR_SUFFIX, CopiedFile, check_name, copy_file, open_outbox
from spe.exports.models import (
    Decision,
    ExportFile,
    ExportOutput,
    ExportRequest,
    ReleasedCells,
    RequestStatus,
    ReviewComment,
    ReviewVote,
    Visibility,
    Vote,
)
from spe.exports.states import check_transition, describe_status, short_id
from spe.projects.models import Project
from spe.projects.states import is_open_for_work
from spe.storage import data_storage

S = RequestStatus
SYSTEM = "system:export-check"
MAX_TEXT = 10_000


@dataclass(frozen=True)
class OutputRequest:
    """One output the researcher asks to export: its file name in the outbox, and why."""

    name: str
    justification: str


# --- helpers ------------------------------------------------------------------------------------


def get_request(session: Session, request_id: str) -> ExportRequest:
    """A request by its id or an unambiguous prefix of at least 8 characters."""
    text = str(request_id).strip().lower()
    try:
        exact: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        exact = None
    found = session.get(ExportRequest, exact) if exact is not None else None
    if exact is None and len(text) >= 8 and all(c in "0123456789abcdef-" for c in text):
        # Short ids are for people at a terminal; requests are few enough to scan.
        matches = [r for r in session.scalars(select(ExportRequest)) if str(r.id).startswith(text)]
        if len(matches) > 1:
            raise ExportError(f"{request_id} matches {len(matches)} requests; give more of the id.")
        found = matches[0] if matches else None
    if found is None:
        raise NotFound(f"There is no export request {request_id}; `spe export list` shows yours.")
    return found


def project_of(session: Session, request: ExportRequest) -> Project:
    project = session.get(Project, request.project_id)
    assert project is not None
    return project


def _target(request: ExportRequest) -> str:
    return f"export_request:{request.id}"


def _text(value: str, what: str, *, required: bool = True) -> str:
    value = (value or "").strip()
    if required and not value:
        raise ExportInputError(f"Give {what}; the other side reads it.")
    if len(value) > MAX_TEXT:
        raise ExportInputError(
            f"{what[0].upper()}{what[1:]} is longer than {MAX_TEXT:,} characters; shorten it."
        )
    if "\x00" in value:
        raise ExportInputError(f"{what[0].upper()}{what[1:]} contains a NUL character.")
    return value


def _current(request: ExportRequest) -> list[ExportOutput]:
    return [o for o in request.outputs if o.round == request.round]


def _output(request: ExportRequest, name: str) -> ExportOutput:
    for out in _current(request):
        if out.name == name:
            return out
    names = ", ".join(o.name for o in _current(request))
    raise NotFound(f"Request {short_id(request)} has no output {name!r}; it has: {names}.")


def default_outbox(project: Project, username: str) -> Path:
    """Where a researcher's workspace for ``project`` keeps its outbox on this machine."""
    from spe.workspaces.layout import host_paths

    return host_paths(project.slug, username).outbox


# --- filing -------------------------------------------------------------------------------------


def _copy_outputs(
    outbox: Path, outputs: Sequence[OutputRequest], dest: Path
) -> list[tuple[OutputRequest, str, list[tuple[str, CopiedFile]], dict[str, Any] | None]]:
    """Copy every output (with its spe.analysis record and evidence) into ``dest``."""
    settings = get_settings()
    if not outputs:
        raise ExportInputError(
            "The request names no outputs; add at least one file from the outbox."
        )
    if len(outputs) > settings.export_max_files:
        raise ExportInputError(
            f"The request names {len(outputs)} outputs; at most {settings.export_max_files} may "
            "go in one request. Split it."
        )
    names = [o.name for o in outputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ExportInputError(f"{twice[0]} is named twice in the request; name it once.")
    for out in outputs:
        check_name(out.name)
        if out.name.endswith(SIDECAR_SUFFIX) or out.name.endswith(".evidence.parquet"):
            raise ExportInputError(
                f"{out.name} is spe.analysis's record of an output, not an output; name the "
                "output file itself (the record comes along)."
            )
        _text(out.justification, f"a justification for {out.name}")
    fd = open_outbox(outbox)
    copied: list[Any] = []
    total = 0
    try:
        for out in outputs:
            files: list[tuple[str, CopiedFile]] = []
            budget = settings.export_max_request_bytes - total
            sidecar: dict[str, Any] | None = None
            if out.name.endswith((PLAN_SUFFIX, DP_SUFFIX)):
                # A plan or a DP answer's reference: the server computes what leaves.
                role = "plan" if out.name.endswith(PLAN_SUFFIX) else "dp"
                files.append((role, copy_file(fd, out.name, dest, max_bytes=MAX_PLAN_BYTES)))
                total += sum(f.size for _, f in files)
                copied.append((out, role, files, None))
                continue
            main = copy_file(
                fd, out.name, dest, max_bytes=min(settings.export_max_file_bytes, budget)
            )
            files.append(("output", main))
            sidecar_name = out.name.rsplit(".", 1)[0] + SIDECAR_SUFFIX
            if _exists(fd, sidecar_name):
                side = copy_file(fd, sidecar_name, dest, max_bytes=1 << 24)
                files.append(("sidecar", side))
                sidecar = _read_sidecar(side)
                if sidecar.get("file") != out.name:
                    raise ExportInputError(
                        f"{sidecar_name} records {sidecar.get('file')!r}, not {out.name}; record "
                        "the output again with spe.analysis."
                    )
                evidence = sidecar.get("evidence")
                if evidence:
                    if not isinstance(evidence, str):
                        raise ExportInputError(f"{sidecar_name} names its evidence wrongly.")
                    files.append(
                        (
                            "evidence",
                            copy_file(  # row-level evidence: bounded by the request's limit
                                fd,
                                evidence,
                                dest,
                                max_bytes=settings.export_max_request_bytes - total,
                                evidence=True,
                            ),
                        )
                    )
            total += sum(f.size for _, f in files)
            if total > settings.export_max_request_bytes:
                raise ExportInputError(
                    "The request's files together exceed "
                    f"{settings.export_max_request_bytes >> 20} MiB; split it into smaller "
                    "requests."
                )
            kind = str(sidecar.get("kind", "file")) if sidecar else "file"
            copied.append((out, kind, files, sidecar))
    finally:
        os.close(fd)
    return copied


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read_sidecar(file: CopiedFile) -> dict[str, Any]:
    try:
        data = json.loads(file.path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ExportInputError(f"{file.name} is not a readable spe.analysis record.") from None
    if not isinstance(data, dict) or data.get("spe_output") != 1:
        raise ExportInputError(f"{file.name} is not a spe.analysis record (no spe_output: 1).")
    return data


@dataclass(frozen=True)
class _Planned:
    """A plan or DP output as filing found it: its kind, who computes it, its plan's hash."""

    kind: str
    computed_by: str
    plan_sha256: str | None
    datasets: list[str]


def _plan_datasets(node: Any) -> set[str]:
    """The datasets a (validated) plan document scans."""
    found: set[str] = set()
    if isinstance(node, dict):
        if node.get("op") == "scan" and isinstance(node.get("dataset"), str):
            found.add(node["dataset"])
        for value in node.values():
            found |= _plan_datasets(value)
    elif isinstance(node, list):
        for value in node:
            found |= _plan_datasets(value)
    return found


def _check_plans(
    session: Session,
    request: ExportRequest,
    copied: Sequence[tuple[OutputRequest, str, list[tuple[str, CopiedFile]], Any]],
) -> dict[str, _Planned]:
    """Validate every plan of the round against the project's catalogue before anything is
    queued: per plan output, (kind, plan SHA-256, datasets). A DP answer's reference is checked
    against the ledger the same way."""
    from spe.analysis.outputs import COMMANDS
    from spe.analysis.plan import plan_hash
    from spe.projects.extracts import plan_catalogue

    found: dict[str, _Planned] = {}
    catalogue = None
    for out, role, files, _ in copied:
        if role == "dp":
            datasets = _check_dp_reference(session, request, files[0][1])
            found[out.name] = _Planned("table", DP, None, datasets)
            continue
        if role != "plan":
            continue
        if catalogue is None:
            catalogue = plan_catalogue(session, project_of(session, request))
        document = read_plan(files[0][1].path.read_bytes(), out.name)
        validate_plan(document, catalogue, out.name)
        sha = plan_hash(document)
        earlier = _same_plan(session, request, sha)
        if earlier is not None:
            raise ExportInputError(
                f"{out.name} is the same analysis as {earlier.name} in request "
                f"{short_id(earlier.request)} ({describe_status(earlier.request)}); it is "
                "not filed twice. Change the analysis or use that request."
            )
        kind = COMMANDS.get(str(document["output"]["command"]), "table")
        found[out.name] = _Planned(kind, SERVER, sha, sorted(_plan_datasets(document["frame"])))
    return found


def _same_plan(session: Session, request: ExportRequest, sha: str) -> ExportOutput | None:
    """An output of the same project with the same plan that is still being checked, reviewed
    or was released (a withdrawn, rejected or revoked request's plan may be filed again)."""
    live = (S.CHECKING, S.IN_REVIEW, S.CHANGES_REQUESTED, S.RELEASED)
    for out in session.scalars(
        select(ExportOutput)
        .join(ExportRequest, ExportRequest.id == ExportOutput.request_id)
        .where(
            ExportOutput.plan_sha256 == sha,
            ExportRequest.project_id == request.project_id,
            ExportRequest.id != request.id,
            ExportRequest.status.in_(live),
            ExportOutput.round == ExportRequest.round,
        )
    ):
        return out
    return None


def _check_dp_reference(session: Session, request: ExportRequest, file: CopiedFile) -> list[str]:
    """The datasets of a filed DP answer, after the ledger confirmed it is this project's."""
    from spe.dp.service import exported_answer

    try:
        data = json.loads(file.path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ExportInputError(f"{file.name} is not a readable DP answer reference.") from None
    if not isinstance(data, dict) or set(data) != {"spe_dp_answer", "query"}:
        raise ExportInputError(
            f"{file.name} is not a DP answer reference; save the answer with its .save(name)."
        )
    try:
        answer = exported_answer(session, project_of(session, request), str(data["query"]))
    except SPEError as exc:
        raise ExportInputError(f"{file.name} cannot be exported: {exc.message}") from None
    return sorted(answer.datasets)


def _store_round(
    session: Session, request: ExportRequest, outbox: Path, outputs: Sequence[OutputRequest]
) -> list[dict[str, Any]]:
    """Copy the round's files into storage (all or nothing) and add their rows; plans are
    validated before anything is stored, so a refused plan queues nothing."""
    relative = f"exports/{request.project_id}/{request.id}/r{request.round}"
    storage = data_storage()
    with storage.atomic_dir(relative) as tmp:
        copied = _copy_outputs(outbox, outputs, tmp)
        plans = _check_plans(session, request, copied)
    summary = []
    for position, (out, kind, files, sidecar) in enumerate(copied):
        planned = plans.get(out.name)
        if planned is not None:
            kind = planned.kind
        row = ExportOutput(
            request_id=request.id,
            round=request.round,
            position=position,
            name=out.name,
            justification=out.justification.strip(),
            kind=kind if kind in ("table", "model", "survival") else "file",
            datasets=json.dumps(
                planned.datasets
                if planned is not None
                else sorted(sidecar.get("datasets", []))
                if sidecar
                else []
            ),
            computed_by=planned.computed_by if planned is not None else WORKSPACE,
            plan_sha256=planned.plan_sha256 if planned is not None else None,
        )
        session.add(row)
        session.flush()
        for role, f in files:
            session.add(
                ExportFile(
                    output_id=row.id,
                    role=role,
                    name=f.name,
                    media_type=f.media_type,
                    size=f.size,
                    sha256=f.sha256,
                    path=f"{relative}/{f.name}",
                )
            )
        summary.append(
            {
                "name": out.name,
                "kind": row.kind,
                "computed_by": row.computed_by,
                **({"plan_sha256": row.plan_sha256} if row.plan_sha256 else {}),
                "files": [
                    {"role": r, "name": f.name, "sha256": f.sha256, "size": f.size}
                    for r, f in files
                ],
            }
        )
    return summary


@state_change("export.file")
def file_request(
    session: Session,
    actor: User,
    project: Project,
    outputs: Sequence[OutputRequest],
    title: str = "",
    outbox: Path | None = None,
) -> tuple[ExportRequest, str]:
    """File a request: copy and freeze the outputs, then queue the server-side check.

    Returns the request and the id of the check job (the caller sends it once committed).
    """
    perms.check_user_can_file(session, actor, project)
    if not is_open_for_work(project):
        raise ExportStateError(
            f"Project {project.slug} is not running, so nothing can be exported."
        )
    request = ExportRequest(
        id=uuid.uuid4(),
        project_id=project.id,
        author=actor.username,
        title=_text(title, "a title", required=False) or f"Outputs of {project.slug}",
        status=S.CHECKING,
        round=1,
    )
    session.add(request)
    session.flush()
    summary = _store_round(
        session, request, outbox or default_outbox(project, actor.username), outputs
    )
    record(
        session,
        actor,
        "export.file",
        _target(request),
        {"round": 1, "title": request.title, "outputs": summary},
        project=project.slug,
    )
    return request, _queue_check(session, actor, request)


def _queue_check(session: Session, actor: User, request: ExportRequest) -> str:
    from spe.jobs import service as jobs

    job = jobs.submit(
        session, actor, "export_check", {"request": str(request.id), "round": request.round}
    )
    return str(job.id)


# --- the server-side check ----------------------------------------------------------------------


def rules_for(session: Session, project: Project) -> Any:
    """The strictest rules over all the project's datasets.

    Never only the datasets an output says it used: that claim comes from the workspace, and a
    researcher could name the dataset with the weakest rules.
    """
    from spe.projects.extracts import granted_datasets
    from spe.sdc import load_rules, strictest

    names = granted_datasets(session, project)
    policies = Path(get_settings().policies_dir)
    if not names:
        return load_rules(policies, holder=project.holder.name)
    return strictest([load_rules(policies, holder=project.holder.name, dataset=n) for n in names])


def extract_files(session: Session, project: Project) -> list[Path]:
    """The Parquet files of the project's current extracts."""
    from spe.projects.extracts import workspace_mounts

    return [folder / "data.parquet" for folder in workspace_mounts(session, project).values()]


def persons_among(files: Sequence[Path], wanted: list[str]) -> set[str]:
    """Which of ``wanted`` are pseudonyms in the project's extracts (evidence may name no one
    else). Memory follows the evidence, not the project: the extracts stream past it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    values = pa.array(wanted, type=pa.string())
    found: set[str] = set()
    for path in files:
        source = pq.ParquetFile(path)
        first = source.schema_arrow.names[0]  # the project pseudonym comes first
        for batch in source.iter_batches(columns=[first], batch_size=1 << 20):
            column = batch.column(0).cast(pa.string())
            found.update(column.filter(pc.is_in(column, value_set=values)).to_pylist())
        if len(found) == len(wanted):
            break
    return found


def released_tables(session: Session, project_id: uuid.UUID) -> list[Any]:
    """The persons behind every cell released from the project, for differencing.

    DP answers take no part: who is inside a DP-answered cell must not change anything a
    researcher or reviewer sees (the differencing reasons named exact counts of DP cells).
    """
    from spe.sdc import ReleasedTable

    rows = session.scalars(
        select(ReleasedCells)
        .where(ReleasedCells.project_id == project_id)
        .order_by(ReleasedCells.released_at)
    )
    return [ReleasedTable.from_bytes(r.data) for r in rows]


@dataclass(frozen=True)
class _FileRef:
    """A frozen file's facts, read while the session was open."""

    name: str
    path: str
    sha256: str
    media_type: str


@dataclass
class _Work:
    """One output of the round, as the check job reads it before computing (no session)."""

    id: uuid.UUID
    name: str
    kind: str
    computed_by: str
    round_dir: str
    files: dict[str, Path]
    roles: dict[str, _FileRef]
    datasets: list[str]
    dp_answer: Any = None


def _frozen_document(work: _Work, role: str) -> bytes:
    """A frozen plan or DP reference, checked against the SHA-256 it was filed with."""
    file = work.roles[role]
    data = data_storage().path(file.path).read_bytes()
    if _sha(data) != file.sha256:
        raise ExportError(
            f"{work.name} no longer matches the SHA-256 it was filed with, so it cannot be "
            "checked; ask an operator to look at the export storage."
        )
    return data


def linked_of(
    holder: str,
    request_id: str,
    project: str,
    title: str,
    earlier: Sequence[Any] = (),
    session: Session | None = None,
) -> Any:
    """What a plan's safe version is protected against besides its own totals: the holder's
    earlier released numbers (from any project) and this request's earlier outputs that are
    sums of its cells, as a callable for spe.exports.checking (linked tables)."""
    from spe.exports import auditing
    from spe.sdc.safe import sums_of_cells

    def linked(report: Any, datasets: Sequence[str]) -> list[Any]:
        groups = auditing.linked_groups(
            holder, request_id, project, title, report, datasets, earlier, session=session
        )
        return sums_of_cells(report, groups)

    return linked


def _check_one(
    work: _Work,
    rules: Any,
    released: list[Any],
    granted: set[str],
    catalogue: Any,
    persons: Any,
    person_space: Any = None,
    person_maps: Sequence[Path] = (),
    linked: Any = None,
) -> Any:
    """The check of one output: computed by the server (plan, DP answer) or, for what the
    workspace computed, the replay of its own evidence as advice."""
    from spe.exports.checking import dp_check, evaluate_plan

    settings = get_settings()
    if work.computed_by == SERVER:
        document = read_plan(_frozen_document(work, "plan"), work.name)
        temp = data_storage().path("tmp/plans")
        temp.mkdir(parents=True, exist_ok=True)
        return evaluate_plan(
            work.name,
            document,
            catalogue,
            rules,
            released,
            memory_mb=settings.plan_memory_mb,
            threads=settings.plan_threads,
            temp_dir=temp,
            person_maps=person_maps,
            linked=linked,
        )
    if work.computed_by == DP:
        return dp_check(work.name, work.dp_answer)
    output = work.roles.get("output")
    media_type = output.media_type if output is not None else "application/octet-stream"
    sidecar_file = work.roles.get("sidecar")
    foreign = sorted(set(work.datasets) - granted)
    if work.kind == "file" or sidecar_file is None:
        return _plain_file(work.name, media_type)
    if foreign:
        return _refused(
            work.name, f"it draws on {', '.join(foreign)}, which the project was not granted"
        )
    from spe.analysis.replay import check_output

    sidecar = json.loads(data_storage().path(sidecar_file.path).read_text("utf-8"))
    return check_output(
        sidecar, work.files, rules, released, known_persons=persons, person_space=person_space
    )


def run_checks(request_id: str, round_: int, progress: Any = None) -> dict[str, Any]:
    """The check job: compute and check every output on the server, then release or queue.

    Plans are evaluated on the extract and their files written by the server; DP answers come
    from the ledger; what the workspace computed is checked as advice and always goes to
    reviewers. Idempotent: a request no longer being checked in that round is left alone.
    """
    from spe.db import readonly, transaction
    from spe.exports import auditing
    from spe.projects.extracts import (
        granted_datasets,
        person_space_files,
        person_space_of,
        plan_catalogue,
    )

    storage = data_storage()
    with readonly() as session:
        request = get_request(session, request_id)
        if request.status != S.CHECKING or request.round != round_:
            return {"request": request_id, "skipped": f"request is {request.status.value}"}
        project = project_of(session, request)
        granted = set(granted_datasets(session, project))
        # Pairwise differencing within the project is replaced by the cumulative audit over
        # every release of the holder (spe.sdc.audit): its reasons name earlier releases, never
        # a count of persons the researcher does not know.
        released: list[Any] = []
        rules = rules_for(session, project)
        persons = partial(persons_among, extract_files(session, project))
        person_maps = person_space_files(session, project)
        # The pandas form of the maps only for outputs the workspace computed (a plan joins
        # the maps in the engine).
        replayed = any(
            o.computed_by == WORKSPACE and any(f.role == "sidecar" for f in o.files)
            for o in _current(request)
        )
        person_space = person_space_of(session, project) if replayed else None
        holder = str(project.holder_id)
        title, project_slug = request.title, project.slug
        catalogue = None
        work: list[_Work] = []
        for out in _current(request):
            roles = {f.role: _FileRef(f.name, f.path, f.sha256, f.media_type) for f in out.files}
            item = _Work(
                id=out.id,
                name=out.name,
                kind=out.kind,
                computed_by=out.computed_by,
                round_dir=f"exports/{request.project_id}/{request.id}/r{request.round}",
                files={f.name: storage.path(f.path) for f in out.files},
                roles=roles,
                datasets=json.loads(out.datasets),
            )
            if item.computed_by == SERVER and catalogue is None:
                catalogue = plan_catalogue(session, project)
            if item.computed_by == DP:
                item.dp_answer = _dp_answer(session, project, item)
            work.append(item)
    results: dict[uuid.UUID, tuple[Any, Any, ExportFile | None]] = {}
    earlier: list[auditing.Earlier] = []
    # Safe versions are protected with the same history the audit reads (the person space).
    linked = linked_of(holder, request_id, project_slug, title, earlier) if person_maps else None
    for i, item in enumerate(work):
        if progress is not None:
            progress(i, len(work))
        check: Any
        try:
            check = _check_one(
                item,
                rules,
                released,
                granted,
                catalogue,
                persons,
                person_space,
                person_maps,
                linked,
            )
            cells = list(getattr(check, "cells", []) or [])
            if cells and person_maps:
                # Earlier outputs of this request count as released for the later ones.
                found = auditing.audit(
                    holder, request_id, project_slug, title, cells, earlier, rules
                )
                check = auditing.with_audit(check, found)
                earlier.append(auditing.Earlier(item.name, cells))
        except Exception as exc:  # a damaged output is the researcher's to fix, not a crash
            message = getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"
            check = _refused(item.name, f"it could not be checked: {message}")
        written = _write_server_file(item, check)
        results[item.id] = (check, rules, written)
    with transaction() as session:
        request = get_request(session, request_id)
        if request.status != S.CHECKING or request.round != round_:
            return {"request": request_id, "skipped": f"request is {request.status.value}"}
        project = project_of(session, request)
        summary = []
        for out in _current(request):
            check, rules, written = results[out.id]
            out.checkable = bool(check.checkable)
            out.check_status = check.status.value
            report = dict(check.report)
            report["computed_by"] = out.computed_by
            if out.computed_by == WORKSPACE:
                report["notice"] = WORKSPACE_NOTICE
            out.reasons = json.dumps(list(check.reasons))
            out.report = json.dumps(report, default=str)
            if written is not None and not any(f.role == "output" for f in out.files):
                out.files.append(written)
            summary.append(
                {
                    "name": out.name,
                    "status": check.status.value,
                    "checkable": check.checkable,
                    "computed_by": out.computed_by,
                    **({"file_sha256": written.sha256} if written is not None else {}),
                }
            )
        request.checked_at = utcnow()
        auto = all(_releases_itself(o, *results[o.id][:2]) for o in _current(request))
        record(
            session,
            SYSTEM,
            "export.check",
            _target(request),
            {"round": request.round, "outputs": summary, "auto_release": auto},
            project=project.slug,
        )
        if auto:
            for out in _current(request):
                out.decision = Decision.APPROVED
            request.auto_released = True  # before the bundle: its review record says so
            _release(
                session,
                SYSTEM,
                request,
                project,
                {o.id: results[o.id][0] for o in _current(request)},
            )
        else:
            check_transition(request, S.IN_REVIEW, "sent to review")
            request.status = S.IN_REVIEW
            record(
                session,
                SYSTEM,
                "export.queue",
                _target(request),
                {"round": request.round, "why": _why_review(results, _current(request))},
                project=project.slug,
            )
        status = request.status.value
    if progress is not None:
        progress(len(work), len(work))
    return {"request": request_id, "status": status, "outputs": summary}


def _releases_itself(out: ExportOutput, check: Any, rules: Any) -> bool:
    """Whether an output may leave without reviewers: only numbers the server computed itself
    (a plan, a DP answer the ledger holds), every check passed, and the holder allows it."""
    if out.computed_by not in (SERVER, DP) or not check.checkable:
        return False
    if check.status.value != "pass":
        return False
    if out.computed_by == DP:
        return bool(getattr(check, "auto_release", False))
    return bool(rules.auto_release)


def _dp_answer(session: Session, project: Project, work: _Work) -> Any:
    """The ledger's record of a filed DP answer, or the sentence why there is none."""
    from spe.dp.service import exported_answer

    try:
        reference = json.loads(_frozen_document(work, "dp").decode("utf-8"))
        return exported_answer(session, project, str(reference["query"]))
    except ExportError:
        raise
    except Exception as exc:
        return getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"


def _write_server_file(work: _Work, check: Any) -> ExportFile | None:
    """Store the file the server wrote for a plan or DP output (never the workspace's)."""
    data = getattr(check, "data", b"")
    if work.computed_by not in (SERVER, DP) or not data:
        return None
    name = check.file_name
    relative = f"{work.round_dir}/server/{name}"
    target = data_storage().path(relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return ExportFile(
        role="output",
        name=name,
        media_type="text/csv",
        size=len(data),
        sha256=_sha(data),
        path=relative,
    )


@dataclass(frozen=True)
class _Check:
    """The outcome of an output's check, for outputs spe.analysis does not replay."""

    checkable: bool
    status: Any
    reasons: list[str]
    report: dict[str, Any]
    released: list[Any]


def _plain_file(name: str, media_type: str) -> _Check:
    from spe.sdc import Verdict

    return _Check(
        checkable=False,
        status=Verdict.REVIEW,
        reasons=[
            f"{name} ({media_type}) is not a result recorded by spe.analysis, so rules cannot "
            "read it; a reviewer must look at it, and two reviewers must approve it."
        ],
        report={"kind": "file", "media_type": media_type},
        released=[],
    )


def _refused(name: str, why: str) -> _Check:
    from spe.sdc import Verdict

    return _Check(True, Verdict.FAIL, [f"{name} fails: {why}."], {}, [])


def _why_review(results: dict[Any, Any], outputs: list[ExportOutput]) -> list[str]:
    why = []
    for out in outputs:
        check, rules = results[out.id][:2]
        if out.computed_by == WORKSPACE and check.checkable:
            why.append(
                f"{out.name}: computed in the workspace (the server could not recompute it); "
                f"a reviewer must look at it (advisory check: {check.status.value})"
            )
        elif not check.checkable:
            why.append(f"{out.name}: rules cannot read it; a reviewer must look at it")
        elif check.status.value != "pass":
            why.append(f"{out.name}: {check.status.value}")
        elif out.computed_by == DP:
            why.append(f"{out.name}: the dataset's policy has DP answers reviewed")
        elif not rules.auto_release:
            why.append(f"{out.name}: the data holder reviews every output")
    return why


# --- release ------------------------------------------------------------------------------------


def _release(
    session: Session,
    actor: User | str,
    request: ExportRequest,
    project: Project,
    checks: dict[uuid.UUID, Any] | None = None,
) -> None:
    """Build and store the signed bundle, remember the released cells, mark the request."""
    from spe.exports.bundle import BundleFile, build_bundle
    from spe.keys.signing import checkpoint_signer

    check_transition(request, S.RELEASED, "released")
    storage = data_storage()
    approved = [o for o in _current(request) if o.decision == Decision.APPROVED]
    if not approved:
        raise ExportStateError(f"Request {short_id(request)} has no approved output to release.")
    now = utcnow()
    released_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    files = []
    for out in approved:
        main = next((f for f in out.files if f.role == "output"), None)
        if main is None:
            raise ExportStateError(
                f"{out.name} has no file to release: the server could not compute it. Refuse it "
                "or ask the researcher to change the analysis."
            )
        data = storage.path(main.path).read_bytes()
        if _sha(data) != main.sha256:
            raise ExportError(
                f"{out.name} no longer matches the SHA-256 it was frozen with, so it cannot be "
                "released; ask an operator to look at the export storage."
            )
        # A plan's file is the server's own, named after the plan (x.plan.json -> x.csv).
        files.append(BundleFile(f"outputs/{main.name}", data, main.media_type))
    votes = _votes(session, request)
    reviewers = sorted({v.reviewer for v in votes})
    # The request's final state first: the bundle's review record must tell the truth.
    request.status = S.RELEASED
    request.decided_at = now
    request.decided_by = actor if isinstance(actor, str) else actor.username
    meta = {
        "request": str(request.id),
        "title": request.title,
        "project": project.slug,
        "holder": project.holder.name,
        "holder_slug": _slug(project.holder.name),
        "author": request.author,
        "released_at": released_at,
        "reviewers": reviewers,
    }
    report = {
        "request": str(request.id),
        "round": request.round,
        "outputs": [_public_report(o) for o in _current(request)],
    }
    review = review_record(session, request, shared_only=True)
    bundle = build_bundle(meta, files, report, review, checkpoint_signer(session))
    relative = f"exports/{request.project_id}/{request.id}/bundle-r{request.round}"
    with storage.atomic_dir(relative) as tmp:
        (tmp / "release.zip").write_bytes(bundle)
    request.bundle_path = f"{relative}/release.zip"
    request.bundle_sha256 = _sha(bundle)
    from spe.exports import auditing

    for out in approved:
        if checks and out.id in checks:
            tables = checks[out.id].released
            cells = list(getattr(checks[out.id], "cells", []) or [])
        else:
            tables, cells = _recheck_released(session, request, out)
        # The holder's history: every later output of any project is audited against it.
        auditing.record(
            session,
            str(project.holder_id),
            str(request.id),
            project.slug,
            request.title,
            now,
            out.name,
            cells,
        )
        for i, table in enumerate(tables):
            session.add(
                ReleasedCells(
                    project_id=request.project_id,
                    output_id=out.id,
                    name=f"{out.name}#{i}" if i else out.name,
                    data=table.to_bytes(),
                )
            )
    record(
        session,
        actor,
        "export.release",
        _target(request),
        {
            "round": request.round,
            "automatic": isinstance(actor, str),
            "bundle_sha256": request.bundle_sha256,
            "outputs": [{"name": f.path, "sha256": _sha(f.data)} for f in files],
        },
        project=project.slug,
    )


def _recheck_released(
    session: Session, request: ExportRequest, out: ExportOutput
) -> tuple[list[Any], list[Any]]:
    """The persons behind a reviewed output's cells: a plan evaluated again on the extract,
    a workspace output recomputed from its frozen evidence, none for a DP answer."""
    from spe.projects.extracts import person_space_files, person_space_of

    if out.computed_by == DP:
        return [], []
    space = person_space_of(session, project_of(session, request))
    if out.computed_by == SERVER:
        from spe.projects.extracts import plan_catalogue

        plan_file = next((f for f in out.files if f.role == "plan"), None)
        if plan_file is None:
            return [], []
        project = project_of(session, request)
        settings = get_settings()
        from spe.exports.checking import evaluate_plan

        document = read_plan(data_storage().path(plan_file.path).read_bytes(), out.name)
        maps = person_space_files(session, project)
        linked = (
            linked_of(
                str(project.holder_id),
                str(request.id),
                project.slug,
                request.title,
                session=session,
            )
            if maps
            else None
        )
        planned = evaluate_plan(
            out.name,
            document,
            plan_catalogue(session, project),
            rules_for(session, project),
            [],
            memory_mb=settings.plan_memory_mb,
            threads=settings.plan_threads,
            person_maps=maps,
            linked=linked,
        )
        main = next((f for f in out.files if f.role == "output"), None)
        if main is not None and planned.data and _sha(planned.data) != main.sha256:
            # Releases since the check changed the safe version's pattern: remember every
            # cell of the table as released (more than was published: the audit is stricter).
            planned = evaluate_plan(
                out.name,
                {**document, "output": {**document["output"], "safe": None}},
                plan_catalogue(session, project),
                rules_for(session, project),
                [],
                memory_mb=settings.plan_memory_mb,
                threads=settings.plan_threads,
                person_maps=maps,
            )
        return list(planned.released), list(planned.cells)
    sidecar_file = next((f for f in out.files if f.role == "sidecar"), None)
    if sidecar_file is None:
        return [], []
    from spe.analysis.replay import check_output

    storage = data_storage()
    files = {f.name: storage.path(f.path) for f in out.files}
    sidecar = json.loads(storage.path(sidecar_file.path).read_text("utf-8"))
    project = project_of(session, request)
    try:
        check = check_output(sidecar, files, rules_for(session, project), person_space=space)
    except Exception:  # the reviewers released it regardless; nothing to remember then
        return [], []
    return list(check.released), list(check.cells)


def _public_report(out: ExportOutput) -> dict[str, Any]:
    """What the bundle says about an output's check: verdicts, never the numbers behind them."""
    report = json.loads(out.report or "{}")
    cells = []
    listed = report.get("cells", []) if isinstance(report, dict) else []
    for cell in listed if isinstance(listed, list) else []:
        if not isinstance(cell, dict):
            continue
        failing = cell.get("failing") or []
        if not failing:
            continue
        cells.append(
            {
                "index": cell.get("index"),
                "columns": cell.get("columns"),
                "status": cell.get("status"),
                "rules": sorted({str(r.get("rule")) for r in failing if isinstance(r, dict)}),
            }
        )
    return {
        "name": out.name,
        "kind": out.kind,
        "checkable": out.checkable,
        "check_status": out.check_status,
        "computed_by": out.computed_by,
        **({"notice": WORKSPACE_NOTICE} if out.computed_by == WORKSPACE else {}),
        **({"plan_sha256": out.plan_sha256} if out.plan_sha256 else {}),
        "decision": out.decision.value if out.decision else None,
        "rules": report.get("rules") if isinstance(report, dict) else None,
        "flagged_cells": cells,
    }


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _slug(text: str) -> str:
    from spe.sdc import holder_slug

    return holder_slug(text)


# --- review -------------------------------------------------------------------------------------


def _votes(session: Session, request: ExportRequest, round_: int | None = None) -> list[ReviewVote]:
    return list(
        session.scalars(
            select(ReviewVote)
            .where(
                ReviewVote.request_id == request.id, ReviewVote.round == (round_ or request.round)
            )
            .order_by(ReviewVote.created_at)
        )
    )


@state_change("export.vote")
def vote(
    session: Session,
    actor: User,
    request: ExportRequest,
    output_name: str,
    choice: Vote | str,
    comment: str,
) -> ReviewVote:
    """A reviewer's vote on one output of this round, with the comment the researcher sees."""
    project = project_of(session, request)
    perms.check_user_can_review(session, actor, request, project)
    if request.status != S.IN_REVIEW:
        raise ExportStateError(
            f"Request {short_id(request)} is {request.status.value.replace('_', ' ')}; votes are "
            "cast while it is in review."
        )
    try:
        choice = Vote(choice)
    except ValueError:
        raise ExportInputError(
            f"{choice!r} is not a vote; use one of {', '.join(v.value for v in Vote)}."
        ) from None
    comment = _text(comment, "a comment with your vote")
    out = _output(request, output_name)
    existing = session.scalar(
        select(ReviewVote).where(
            ReviewVote.output_id == out.id,
            ReviewVote.round == request.round,
            ReviewVote.reviewer == actor.username,
        )
    )
    previous = existing.vote.value if existing else None
    if existing is None:
        existing = ReviewVote(
            request_id=request.id,
            output_id=out.id,
            round=request.round,
            reviewer=actor.username,
            vote=choice,
            comment=comment,
        )
        session.add(existing)
    else:
        existing.vote, existing.comment, existing.created_at = choice, comment, utcnow()
    record(
        session,
        actor,
        "export.vote",
        _target(request),
        {
            "round": request.round,
            "output": out.name,
            "vote": choice.value,
            "previous": previous,
            "comment": comment,
        },
        project=project.slug,
    )
    return existing


@state_change("export.comment")
def comment(
    session: Session,
    actor: User,
    request: ExportRequest,
    body: str,
    visibility: Visibility | str = Visibility.SHARED,
    output_name: str | None = None,
) -> ReviewComment:
    """A comment on a request or one output; reviewers may keep theirs private to reviewers."""
    project = project_of(session, request)
    try:
        visibility = Visibility(visibility)
    except ValueError:
        raise ExportInputError(
            "Visibility is 'shared' (the researcher sees it) or 'reviewers'."
        ) from None
    if perms.user_is_author(session, actor, request):
        if visibility != Visibility.SHARED:
            raise ExportInputError(
                "Your comments go to the reviewers and are shared; drop --private."
            )
    else:
        perms.check_user_can_review(session, actor, request, project)
    if request.status in (S.WITHDRAWN, S.REJECTED, S.REVOKED):
        raise ExportStateError(
            f"Request {short_id(request)} is {request.status.value}; it takes no comments."
        )
    body = _text(body, "the comment's text")
    out = _output(request, output_name) if output_name else None
    row = ReviewComment(
        request_id=request.id,
        output_id=out.id if out else None,
        round=request.round,
        author=actor.username,
        visibility=visibility,
        body=body,
    )
    session.add(row)
    record(
        session,
        actor,
        "export.comment",
        _target(request),
        {
            "round": request.round,
            "output": out.name if out else None,
            "visibility": visibility.value,
        },
        project=project.slug,
    )
    return row


def approvals_needed(out: ExportOutput) -> int:
    """Four eyes: overriding a failed check or approving what rules cannot read takes two."""
    return 1 if (out.checkable and out.check_status == "pass") else 2


def pending_decisions(session: Session, request: ExportRequest) -> dict[str, Decision | str]:
    """Per output of the current round: its decision from the votes, or why it has none yet."""
    votes = _votes(session, request)
    out_votes: dict[uuid.UUID, list[ReviewVote]] = {}
    for v in votes:
        out_votes.setdefault(v.output_id, []).append(v)
    result: dict[str, Decision | str] = {}
    for out in _current(request):
        mine = out_votes.get(out.id, [])
        kinds = {v.vote for v in mine}
        approvals = len({v.reviewer for v in mine if v.vote == Vote.APPROVE})
        needed = approvals_needed(out)
        if Vote.REJECT in kinds:
            result[out.name] = Decision.REJECTED
        elif Vote.REQUEST_CHANGES in kinds:
            result[out.name] = Decision.CHANGES_REQUESTED
        elif approvals >= needed:
            result[out.name] = Decision.APPROVED
        elif not mine:
            result[out.name] = "it has no vote yet"
        else:
            why = (
                "it cannot be checked automatically"
                if not out.checkable
                else f"it overrides a check that gave {out.check_status}"
            )
            result[out.name] = f"{why}, so a second reviewer must approve it too (four eyes)"
    return result


@state_change("export.decide")
def decide(session: Session, actor: User, request: ExportRequest) -> RequestStatus:
    """Close the review round: release the approved outputs, or return or reject the request."""
    project = project_of(session, request)
    perms.check_user_can_review(session, actor, request, project)
    if request.status != S.IN_REVIEW:
        raise ExportStateError(
            f"Request {short_id(request)} is {request.status.value.replace('_', ' ')}; only a "
            "request in review can be decided."
        )
    decisions = pending_decisions(session, request)
    open_ = {n: d for n, d in decisions.items() if not isinstance(d, Decision)}
    if open_:
        raise ExportStateError(
            "Not every output is decided: "
            + "; ".join(f"{n}: {why}" for n, why in open_.items())
            + "."
        )
    for out in _current(request):
        out.decision = Decision(decisions[out.name])
    values = set(decisions.values())
    details = {"round": request.round, "decisions": {n: str(d) for n, d in decisions.items()}}
    if Decision.CHANGES_REQUESTED in values:
        check_transition(request, S.CHANGES_REQUESTED, "returned for changes")
        request.status = S.CHANGES_REQUESTED
    elif values == {Decision.REJECTED}:
        check_transition(request, S.REJECTED, "rejected")
        request.status = S.REJECTED
        request.decided_at, request.decided_by = utcnow(), actor.username
    record(
        session,
        actor,
        "export.decide",
        _target(request),
        {**details, "status": _next_status(values)},
        project=project.slug,
    )
    if request.status == S.IN_REVIEW:
        _release(session, actor, request, project)
    return request.status


def _next_status(values: set[Decision | str]) -> str:
    if Decision.CHANGES_REQUESTED in values:
        return S.CHANGES_REQUESTED.value
    if values == {Decision.REJECTED}:
        return S.REJECTED.value
    return S.RELEASED.value


# --- the researcher's moves ---------------------------------------------------------------------


@state_change("export.withdraw")
def withdraw(session: Session, actor: User, request: ExportRequest, reason: str = "") -> None:
    project = project_of(session, request)
    perms.check_user_is_author(session, actor, request, "withdraw it")
    check_transition(request, S.WITHDRAWN, "withdrawn")
    request.status = S.WITHDRAWN
    request.withdraw_reason = _text(reason, "a reason", required=False) or None
    record(
        session,
        actor,
        "export.withdraw",
        _target(request),
        {"round": request.round, "reason": reason},
        project=project.slug,
    )


@state_change("export.resubmit")
def resubmit(
    session: Session,
    actor: User,
    request: ExportRequest,
    outputs: Sequence[OutputRequest],
    note: str = "",
    outbox: Path | None = None,
) -> str:
    """Send changed outputs after the reviewers asked for changes: a new round, votes reset."""
    project = project_of(session, request)
    session.refresh(request, with_for_update=True)  # as accept_safe_version: one new round
    perms.check_user_is_author(session, actor, request, "resubmit it")
    perms.check_user_can_file(session, actor, project)
    if request.status == S.IN_REVIEW:  # IN_REVIEW -> CHECKING is for safe versions only
        raise ExportStateError(
            f"Request {short_id(request)} cannot be resubmitted: it is waiting for review. "
            "Wait for the reviewers' decision, or withdraw it and file a new request."
        )
    check_transition(request, S.CHECKING, "resubmitted")
    request.round += 1
    request.status = S.CHECKING
    request.submitted_at = utcnow()
    request.checked_at = None
    summary = _store_round(
        session, request, outbox or default_outbox(project, actor.username), outputs
    )
    record(
        session,
        actor,
        "export.resubmit",
        _target(request),
        {"round": request.round, "note": _text(note, "a note", required=False), "outputs": summary},
        project=project.slug,
    )
    return _queue_check(session, actor, request)


# --- the safe version of a failing table ---------------------------------------------------------

# Which safe versions each table command has (FORMATS.md: describe publishes no totals, so it
# can only leave cells out; rounding protects counts).
SAFE_METHODS_OF: dict[str, tuple[str, ...]] = {
    "crosstab": ("suppress", "round"),
    "pivot_table": ("suppress", "round"),
    "hist": ("suppress", "round"),
    "describe": ("suppress",),
}


@dataclass(frozen=True)
class _SafeVersion:
    """A failing table's safe version, recomputed on the server from the frozen evidence."""

    output: ExportOutput
    method: str
    command: str
    table: Any  # the published pandas table
    hidden: Any  # numpy bool mask over ``table``: cells left out (suppressed)
    rounded: Any  # numpy bool mask over ``table``: counts rounded
    changes: list[dict[str, Any]]
    csv: bytes
    sidecar: bytes  # a workspace output's new record (b"" for a plan)
    evidence: Path | None  # a workspace output's frozen evidence (None for a plan)
    released: list[Any]
    rules: Any
    plan: bytes = b""  # a plan output's new document: the same plan asking for the safe version
    plan_sha256: str | None = None
    check: Any = None  # a plan's: the server's check of the safe version (with the audit)


def _check_can_accept(
    session: Session, actor: User, request: ExportRequest, project: Project
) -> None:
    """Raise, with a sentence, unless ``actor`` may accept a safe version for ``request`` now."""
    perms.check_user_is_author(session, actor, request, "accept a safe version")
    perms.check_user_can_file(session, actor, project)
    if not is_open_for_work(project):
        raise ExportStateError(
            f"Project {project.slug} is not running, so nothing can be exported."
        )
    if request.status not in (S.IN_REVIEW, S.CHANGES_REQUESTED):
        then = (
            "wait for the check to finish"
            if request.status == S.CHECKING
            else "file a new request for the table instead"
        )
        raise ExportStateError(
            f"Request {short_id(request)} cannot take a safe version now: "
            f"{describe_status(request)}. A safe version replaces a failing table while the "
            f"request is in review or returned for changes; {then}."
        )
    check_transition(request, S.CHECKING, "sent back to the check")


def _altered(file: ExportFile, output_name: str) -> ExportError:
    return ExportError(
        f"{file.name} of {output_name} no longer matches the SHA-256 it was frozen with; ask an "
        "operator to look at the export storage."
    )


def _frozen_bytes(file: ExportFile, output_name: str) -> bytes:
    """A small frozen file's bytes (a sidecar), refused when altered since it was frozen."""
    data = data_storage().path(file.path).read_bytes()
    if _sha(data) != file.sha256:
        raise _altered(file, output_name)
    return data


def _verify_frozen(file: ExportFile, output_name: str, copy_to: Path | None = None) -> None:
    """Stream a frozen file (evidence may be large) through SHA-256, copying it on the way;
    refused when altered since it was frozen."""
    import contextlib
    import hashlib

    digest = hashlib.sha256()
    with contextlib.ExitStack() as files:
        source = files.enter_context(open(data_storage().path(file.path), "rb"))
        target = files.enter_context(open(copy_to, "xb")) if copy_to is not None else None
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            if target is not None:
                target.write(block)
    if digest.hexdigest() != file.sha256:
        raise _altered(file, output_name)


def _released_before(
    session: Session, request: ExportRequest, project: Project, out: ExportOutput, rules: Any
) -> list[Any]:
    """What the check will hold ``out`` against: the project's released tables and those of the
    round's earlier outputs, replayed as run_checks replays them (so the safe table computed
    now is the one the check recomputes)."""
    from spe.analysis.replay import check_output
    from spe.projects.extracts import granted_datasets

    storage = data_storage()
    granted = set(granted_datasets(session, project))
    persons = partial(persons_among, extract_files(session, project))
    released = released_tables(session, project.id)
    for earlier in _current(request):
        if earlier.position >= out.position:
            break
        sidecar_file = next((f for f in earlier.files if f.role == "sidecar"), None)
        if earlier.kind == "file" or sidecar_file is None:
            continue
        if set(json.loads(earlier.datasets)) - granted:
            continue
        files = {f.name: storage.path(f.path) for f in earlier.files}
        try:
            sidecar = json.loads(storage.path(sidecar_file.path).read_text("utf-8"))
            check = check_output(sidecar, files, rules, released, known_persons=persons)
        except Exception:  # run_checks refuses such an output: it releases nothing
            check = None
        released = [*released, *(check.released if check is not None else [])]
    return released


def _make_safe(
    session: Session, request: ExportRequest, project: Project, output_name: str, method: str
) -> _SafeVersion:
    """Recompute the safe version of a failing table from its frozen sidecar and evidence, with
    the server's rules; nothing the workspace computed is used."""
    import numpy as np
    import pyarrow.parquet as pq

    from spe.analysis.csvtable import table_csv
    from spe.analysis.errors import AnalysisError
    from spe.analysis.outputs import compute
    from spe.analysis.sidecar import utc_now, validate_sidecar
    from spe.sdc import Verdict

    out = _output(request, output_name)
    name = out.name
    if out.computed_by == DP:
        raise ExportInputError(
            f"{name} is a DP answer, which is noisy already and has no safe version; reviewers "
            "decide on it as it is."
        )
    if out.computed_by == SERVER:
        return _make_safe_plan(session, request, project, out, method)
    if out.kind == "file":
        raise ExportInputError(
            f"{name} is not a table recorded by spe.analysis, so the server cannot make a safe "
            "version of it; reviewers decide on it as it is, or record the table with "
            "spe.analysis and resubmit it."
        )
    if out.kind != "table":
        what = "a model" if out.kind == "model" else "a life table"
        raise ExportInputError(
            f"{name} is {what}; only tables (crosstab, pivot_table, hist, describe) have a safe "
            "version. Change the analysis in the workspace and resubmit it."
        )
    roles = {f.role: f for f in out.files}
    if "sidecar" not in roles or "evidence" not in roles:
        raise ExportInputError(
            f"{name} came without its spe.analysis record and evidence, so the server cannot "
            "recompute it; record it with spe.analysis and resubmit it."
        )
    if out.check_status == "pass":
        raise ExportInputError(f"{name} passes every check already; there is nothing to make safe.")
    if out.check_status not in ("fail", "review"):
        raise ExportStateError(f"{name} has not been checked yet; wait for its check.")
    try:
        meta = validate_sidecar(json.loads(_frozen_bytes(roles["sidecar"], name)))
    except (ValueError, AnalysisError) as exc:
        why = getattr(exc, "message", None) or "it is not JSON"
        raise ExportInputError(
            f"The record of {name} cannot be read ({why}); record the output again and resubmit it."
        ) from None
    agg = str(meta.spec.get("agg") or "count")
    _check_safe_method(name, meta.command, agg, method, meta.spec.get("safe"))
    evidence = data_storage().path(roles["evidence"].path)
    _verify_frozen(roles["evidence"], name)
    if roles["evidence"].sha256 != meta.evidence_sha256:
        raise ExportInputError(
            f"The evidence of {name} is not the evidence its record names (the SHA-256 differs), "
            "so no safe version can be computed from it; record the output again and resubmit it."
        )
    rules = rules_for(session, project)
    released = _released_before(session, request, project, out, rules)
    spec = {**meta.spec, "safe": method}
    try:
        rows = pq.read_table(evidence).to_pandas()
        computed = compute(meta.command, rows, spec, rules, released)
    except AnalysisError as exc:
        raise ExportInputError(f"No safe version of {name} can be made: {exc.message}") from None
    except Exception as exc:  # hostile evidence ends in a sentence, never a crash
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportInputError(
            f"{name} cannot be recomputed from its evidence ({first}); record it again and "
            "resubmit it."
        ) from None
    table = computed.table
    withheld = None
    if computed.safe is None:  # describe: no totals, so failing statistics are simply left out
        withheld = computed.severity >= Verdict.FAIL.severity
        values = table.to_numpy(dtype=object, copy=True)
        values[withheld] = np.nan
        table = type(table)(values, index=table.index, columns=table.columns).infer_objects()
        hidden = withheld.copy()
        rounded = np.zeros(table.shape, dtype=bool)
        changes = [
            {
                "index": cell["index"],
                "columns": cell["columns"],
                "action": "suppressed",
                "kind": "primary",
                "reason": "; ".join(o["sentence"] for o in cell.get("failing", [])),
            }
            for cell in computed.report(withheld)["cells"]
            if not cell["published"]
        ]
    else:
        safe = computed.safe
        hidden = np.zeros(table.shape, dtype=bool)
        rounded = np.zeros(table.shape, dtype=bool)
        n_rows, n_cols = safe.shape
        hidden[:n_rows, :n_cols] = np.asarray(safe.suppressed, dtype=bool)
        rows_at = {label: i for i, label in enumerate(safe.row_labels)}
        cols_at = {label: i for i, label in enumerate(safe.col_labels)}
        for change in safe.changes:
            if change.action == "rounded":
                rounded[rows_at[change.index], cols_at[change.columns]] = True
        # The original values stay out: the preview shows what would be published.
        changes = [
            {k: v for k, v in c.to_dict().items() if k not in ("original", "published")}
            for c in safe.changes
        ]
    csv = table_csv(table).encode("utf-8")
    report = computed.report(withheld)
    report["advisory"] = (
        "Safe version computed by the SPE server from the frozen evidence when its author "
        "accepted it; the export check decides on it."
    )
    sidecar = {
        "spe_output": 1,
        "name": meta.name,
        "kind": meta.kind,
        "command": meta.command,
        "file": meta.file,
        "file_sha256": _sha(csv),
        "evidence": meta.evidence,
        "evidence_sha256": meta.evidence_sha256,
        "spec": spec,
        "datasets": list(meta.datasets),
        "created": utc_now(),
        "report": report,
    }
    validate_sidecar(sidecar)  # never store what the check would refuse
    text = json.dumps(sidecar, ensure_ascii=False, indent=1, allow_nan=False, default=str)
    return _SafeVersion(
        output=out,
        method=method,
        command=meta.command,
        table=table,
        hidden=hidden,
        rounded=rounded,
        changes=changes,
        csv=csv,
        sidecar=text.encode("utf-8"),
        evidence=evidence,
        released=released,
        rules=rules,
    )


def _check_safe_method(name: str, command: str, agg: str, method: str, current: Any) -> None:
    """Raise, with a sentence, unless ``method`` is a safe version a ``command`` table of
    ``agg`` has, and not the one it is already (``current``)."""
    allowed = SAFE_METHODS_OF.get(command)
    if allowed is None:
        raise ExportInputError(f"{name} is a {command} output, which has no safe version.")
    if method not in allowed:
        if method in SAFE_METHODS_OF["crosstab"]:
            raise ExportInputError(
                f"{name} is a describe table, whose only safe version leaves failing statistics "
                "out; use method 'suppress'."
            )
        raise ExportInputError(
            f"{method!r} is not a safe version; use 'suppress' (failing cells left out, with "
            "cells that protect them) or 'round' (counts rounded to multiples of 5)."
        )
    if method == "round" and agg != "count":
        raise ExportInputError(
            f"Rounding protects counts, and {name} is a table of {agg}; use method 'suppress'."
        )
    if current == method:
        raise ExportInputError(
            f"{name} is already the {method} safe version; the reviewers decide on it now."
        )


def _make_safe_plan(
    session: Session, request: ExportRequest, project: Project, out: ExportOutput, method: str
) -> _SafeVersion:
    """A plan output's safe version: the same frozen plan asking for it, evaluated by the server
    on the extract and checked (audit included) as the check will; nothing the workspace
    computed is used, and the plan document is the only thing that changes."""
    import numpy as np

    from spe.analysis.errors import AnalysisError
    from spe.analysis.plan import plan_hash
    from spe.exports import auditing
    from spe.exports.checking import compute_plan, server_check
    from spe.projects.extracts import person_space_files, plan_catalogue

    name = out.name
    if out.kind != "table":
        what = "a model" if out.kind == "model" else "a life table"
        raise ExportInputError(
            f"{name} is {what}; only tables (crosstab, pivot_table, hist, describe) have a safe "
            "version. Change the plan in the workspace and resubmit it."
        )
    if out.check_status == "pass":
        raise ExportInputError(f"{name} passes every check already; there is nothing to make safe.")
    if out.check_status not in ("fail", "review"):
        raise ExportStateError(f"{name} has not been checked yet; wait for its check.")
    plan_file = next((f for f in out.files if f.role == "plan"), None)
    if plan_file is None:
        raise ExportInputError(f"{name} has no frozen plan; file the plan again.")
    document = read_plan(_frozen_bytes(plan_file, name), name)
    output = document.get("output") if isinstance(document, dict) else None
    if not isinstance(output, dict):
        raise ExportInputError(f"{name} is not a plan with an output; file the plan again.")
    command = str(output.get("command"))
    _check_safe_method(name, command, str(output.get("agg") or "count"), method, output.get("safe"))
    safe_document = {**document, "output": {**output, "safe": method}}
    sha = plan_hash(safe_document)
    same = _same_plan(session, request, sha)
    if same is not None:
        raise ExportInputError(
            f"The {method} safe version of {name} is already filed as {same.name} in request "
            f"{short_id(same.request)} ({describe_status(same.request)}); use that request."
        )
    rules = rules_for(session, project)
    settings = get_settings()
    maps = person_space_files(session, project)
    holder, title = str(project.holder_id), request.title
    linked = (
        linked_of(holder, str(request.id), project.slug, title, session=session) if maps else None
    )
    try:
        result = compute_plan(
            name,
            safe_document,
            plan_catalogue(session, project),
            rules,
            [],
            memory_mb=settings.plan_memory_mb,
            threads=settings.plan_threads,
            person_maps=maps,
            linked=linked,
        )
    except AnalysisError as exc:
        raise ExportInputError(f"No safe version of {name} can be made: {exc.message}") from None
    check = server_check(name, result)
    if check.cells and maps:
        found = auditing.audit(holder, str(request.id), project.slug, title, check.cells, [], rules)
        check = auditing.with_audit(check, found)
    computed = result.computed
    table = computed.table
    hidden = np.zeros(table.shape, dtype=bool)
    rounded = np.zeros(table.shape, dtype=bool)
    changes: list[dict[str, Any]] = []
    withheld = computed.withheld_of_plan()
    if computed.safe is None and withheld is not None:  # describe: failing statistics left out
        hidden = np.asarray(withheld, dtype=bool).copy()
        values = table.to_numpy(dtype=object, copy=True)
        values[hidden] = np.nan
        table = type(table)(values, index=table.index, columns=table.columns).infer_objects()
        changes = [
            {
                "index": cell["index"],
                "columns": cell["columns"],
                "action": "suppressed",
                "kind": "primary",
                "reason": "; ".join(o["sentence"] for o in cell.get("failing", [])),
            }
            for cell in computed.report(withheld)["cells"]
            if not cell["published"]
        ]
    elif computed.safe is not None:
        safe = computed.safe
        n_rows, n_cols = safe.shape
        hidden[:n_rows, :n_cols] = np.asarray(safe.suppressed, dtype=bool)
        rows_at = {label: i for i, label in enumerate(safe.row_labels)}
        cols_at = {label: i for i, label in enumerate(safe.col_labels)}
        for change in safe.changes:
            if change.action == "rounded":
                rounded[rows_at[change.index], cols_at[change.columns]] = True
        changes = [
            {k: v for k, v in c.to_dict().items() if k not in ("original", "published")}
            for c in safe.changes
        ]
    text = json.dumps(safe_document, ensure_ascii=False, indent=1, allow_nan=False)
    return _SafeVersion(
        output=out,
        method=method,
        command=command,
        table=table,
        hidden=hidden,
        rounded=rounded,
        changes=changes,
        csv=check.data,
        sidecar=b"",
        evidence=None,
        released=[],
        rules=rules,
        plan=text.encode("utf-8"),
        plan_sha256=sha,
        check=check,
    )


@state_change("export.accept_safe")
def accept_safe_version(
    session: Session,
    actor: User,
    request: ExportRequest,
    output_name: str,
    method: str = "suppress",
) -> str:
    """Replace a failing table by its safe version, computed here by the server: from the frozen
    evidence for a workspace output, from its own evaluation of the plan for a plan output.

    A new round starts with every output of the current one carried over (their frozen files
    copied) and the chosen one replaced (a plan by the same plan asking for the safe version);
    returns the id of the check job, which the caller sends once committed. The check then
    computes the safe version again like any output: its verdict, and the release, stay the
    server's.
    """
    project = project_of(session, request)
    # One acceptance at a time per request (SQLite's writers are serial already).
    session.refresh(request, with_for_update=True)
    _check_can_accept(session, actor, request, project)
    safe = _make_safe(session, request, project, output_name, method)
    previous, before = _current(request), request.status
    request.round += 1
    request.status = S.CHECKING
    request.submitted_at = utcnow()
    request.checked_at = None
    relative = f"exports/{request.project_id}/{request.id}/r{request.round}"
    storage = data_storage()
    # Per output, its files as (old row, size, sha256) in the new round.
    carried: list[tuple[ExportOutput, list[tuple[ExportFile, int, str]]]] = []
    with storage.atomic_dir(relative) as tmp:  # all or nothing
        for out in previous:
            files = []
            for f in out.files:
                if f.role == "output" and out.computed_by in (SERVER, DP):
                    continue  # the server computes its file again in the new round's check
                new = (
                    {"plan": safe.plan}
                    if out.computed_by == SERVER
                    else {"output": safe.csv, "sidecar": safe.sidecar}
                ).get(f.role)
                if out.id == safe.output.id and new is not None:
                    (tmp / f.name).write_bytes(new)
                    files.append((f, len(new), _sha(new)))
                else:
                    _verify_frozen(f, out.name, copy_to=tmp / f.name)
                    files.append((f, f.size, f.sha256))
            carried.append((out, files))
    summary = []
    for out, files in carried:
        row = ExportOutput(
            request_id=request.id,
            round=request.round,
            position=out.position,
            name=out.name,
            justification=out.justification,
            kind=out.kind,
            datasets=out.datasets,
            computed_by=out.computed_by,
            plan_sha256=safe.plan_sha256 if out.id == safe.output.id else out.plan_sha256,
        )
        session.add(row)
        session.flush()
        for f, size, sha256 in files:
            session.add(
                ExportFile(
                    output_id=row.id,
                    role=f.role,
                    name=f.name,
                    media_type=f.media_type,
                    size=size,
                    sha256=sha256,
                    path=f"{relative}/{f.name}",
                )
            )
        summary.append(
            {
                "name": out.name,
                "kind": out.kind,
                "files": [
                    {"role": f.role, "name": f.name, "sha256": sha256, "size": size}
                    for f, size, sha256 in files
                ],
            }
        )
    record(
        session,
        actor,
        "export.accept_safe",
        _target(request),
        {
            "round": request.round,
            "previous_round": request.round - 1,
            "previous_status": before.value,
            "output": safe.output.name,
            "method": method,
            "computed_by": safe.output.computed_by,
            "file_sha256": _sha(safe.csv),
            **(
                {"plan_sha256": safe.plan_sha256, "replaced_plan_sha256": safe.output.plan_sha256}
                if safe.plan_sha256
                else {"sidecar_sha256": _sha(safe.sidecar)}
            ),
            "replaced_file_sha256": next(
                (f.sha256 for f in safe.output.files if f.role == "output"), None
            ),
            "outputs": summary,
        },
        project=project.slug,
    )
    return _queue_check(session, actor, request)


def safe_preview(
    session: Session,
    actor: User,
    request: ExportRequest,
    output_name: str,
    method: str = "suppress",
) -> dict[str, Any]:
    """What accepting the safe version would publish, and the check's verdict on it; changes
    nothing. For the pages: rows of labels and values (suppressed cells marked), and whether
    the viewer may accept it now (``can_accept``, else ``cannot_accept`` says why)."""
    import tempfile

    from spe.analysis.csvtable import render
    from spe.analysis.replay import check_output
    from spe.errors import PermissionDenied

    project = project_of(session, request)
    perms.check_user_can_view(session, actor, request, project)
    safe = _make_safe(session, request, project, output_name, method)
    if safe.check is not None:  # a plan: the server's own check of its safe version
        check = safe.check
    else:
        sidecar = json.loads(safe.sidecar)
        assert safe.evidence is not None  # a workspace output's safe version has its evidence
        with tempfile.TemporaryDirectory(prefix="spe-safe-") as folder:
            csv_path = Path(folder) / sidecar["file"]
            csv_path.write_bytes(safe.csv)
            check = check_output(
                sidecar,
                {sidecar["file"]: csv_path, sidecar["evidence"]: safe.evidence},
                safe.rules,
                safe.released,
                known_persons=partial(persons_among, extract_files(session, project)),
            )
    try:
        _check_can_accept(session, actor, request, project)
        refusal = None
    except (PermissionDenied, ExportError) as exc:
        refusal = exc.message
    shown = render(safe.table)
    labels = shown.label_fields
    heads = [line[labels:] for line in shown.rows[: max(shown.header_lines - 1, 1)]]
    rows = []
    for r, fields in enumerate(shown.rows[shown.header_lines :]):
        rows.append(
            {
                "labels": fields[:labels],
                "cells": [
                    {
                        "value": value if value != "" else None,
                        "suppressed": bool(safe.hidden[r, c]),
                        "rounded": bool(safe.rounded[r, c]),
                    }
                    for c, value in enumerate(fields[labels:])
                ],
            }
        )
    return {
        "request": str(request.id),
        "round": request.round,
        "output": safe.output.name,
        "computed_by": safe.output.computed_by,
        "command": safe.command,
        "method": safe.method,
        "index_names": [str(n) for n in safe.table.index.names],
        "column_names": [str(n) for n in safe.table.columns.names if n is not None],
        "columns": [list(parts) for parts in zip(*heads, strict=True)],
        "rows": rows,
        "suppressed_cells": int(safe.hidden.sum()),
        "rounded_cells": int(safe.rounded.sum()),
        "changes": safe.changes,
        "status": check.status.value,
        "reasons": list(check.reasons),
        "file_sha256": _sha(safe.csv),
        "csv": safe.csv.decode("utf-8"),
        "can_accept": refusal is None,
        "cannot_accept": refusal,
    }


@state_change("export.revoke")
def revoke(session: Session, actor: User, request: ExportRequest, reason: str) -> None:
    """Take back a release (a reviewer, with a reason the researcher is shown)."""
    project = project_of(session, request)
    perms.check_user_can_review(session, actor, request, project)
    reason = _text(reason, "a reason for revoking the release")
    check_transition(request, S.REVOKED, "revoked")
    request.status = S.REVOKED
    request.revoked_at, request.revoked_by, request.revoke_reason = utcnow(), actor.username, reason
    record(
        session,
        actor,
        "export.revoke",
        _target(request),
        {
            "round": request.round,
            "reason": reason,
            "bundle_sha256": request.bundle_sha256,
            "notify": request.author,
        },
        project=project.slug,
    )


def download(session: Session, actor: User, request: ExportRequest) -> Path:
    """The released bundle's path, for its author only; the download is audited."""
    project = project_of(session, request)
    perms.check_user_is_author(session, actor, request, "download its bundle")
    if request.status != S.RELEASED or not request.bundle_path:
        raise ExportStateError(
            f"Request {short_id(request)} is {request.status.value.replace('_', ' ')}; only a "
            "released request can be downloaded."
            + (f" Reason: {request.revoke_reason}" if request.revoke_reason else "")
        )
    path = data_storage().path(request.bundle_path)
    record(
        session,
        actor,
        "export.download",
        _target(request),
        {"bundle_sha256": request.bundle_sha256},
        project=project.slug,
    )
    return path


# --- what each role sees ------------------------------------------------------------------------


def age_days(request: ExportRequest, now: dt.datetime | None = None) -> float:
    now = now or utcnow()
    return (now - request.submitted_at).total_seconds() / 86400


def is_overdue(request: ExportRequest, now: dt.datetime | None = None) -> bool:
    return (
        request.status in (S.CHECKING, S.IN_REVIEW)
        and age_days(request, now) > get_settings().export_review_days
    )


def summary(request: ExportRequest, project: Project | None = None) -> dict[str, Any]:
    return {
        "id": str(request.id),
        "project": project.slug if project else None,
        "title": request.title,
        "author": request.author,
        "status": request.status.value,
        "round": request.round,
        "submitted_at": request.submitted_at.isoformat(),
        "age_days": round(age_days(request), 2),
        "overdue": is_overdue(request),
        "auto_released": request.auto_released,
        "outputs": [o.name for o in _current(request)],
        "revoke_reason": request.revoke_reason,
    }


def list_requests(
    session: Session, actor: User, project: Project | None = None
) -> list[dict[str, Any]]:
    """The actor's own requests, newest first."""
    query = select(ExportRequest).where(ExportRequest.author == actor.username)
    if project is not None:
        query = query.where(ExportRequest.project_id == project.id)
    rows = session.scalars(query.order_by(ExportRequest.submitted_at.desc()))
    return [summary(r, project_of(session, r)) for r in rows]


def review_queue(
    session: Session, actor: User, *, overdue_only: bool = False
) -> list[dict[str, Any]]:
    """Requests waiting for the actor's review (never their own), oldest first, with age."""
    perms.check_user_can_see_queue(session, actor)
    rows = session.scalars(
        select(ExportRequest)
        .where(ExportRequest.status.in_([S.IN_REVIEW, S.CHECKING]))
        .order_by(ExportRequest.submitted_at)
    )
    out = []
    for request in rows:
        project = project_of(session, request)
        if not perms.user_can_review(session, actor, request, project):
            continue
        item = summary(request, project)
        if overdue_only and not item["overdue"]:
            continue
        out.append(item)
    return out


def review_record(session: Session, request: ExportRequest, *, shared_only: bool) -> dict[str, Any]:
    """Votes and comments of every round; ``shared_only`` leaves out reviewers' private notes."""
    votes = list(
        session.scalars(
            select(ReviewVote)
            .where(ReviewVote.request_id == request.id)
            .order_by(ReviewVote.created_at)
        )
    )
    votes_of_round = [v for v in votes if v.round == request.round]
    names = {o.id: o.name for o in request.outputs}
    comments = session.scalars(
        select(ReviewComment)
        .where(ReviewComment.request_id == request.id)
        .order_by(ReviewComment.created_at)
    )
    return {
        "request": str(request.id),
        "author": request.author,
        "status": request.status.value,
        "round": request.round,
        "submitted_at": request.submitted_at.isoformat(),
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "decided_by": request.decided_by,
        "automatic_release": request.auto_released,
        "decisions": [_how_decided(o, request, votes_of_round) for o in _current(request)],
        "votes": [
            {
                "round": v.round,
                "output": names.get(v.output_id),
                "reviewer": v.reviewer,
                "vote": v.vote.value,
                "comment": v.comment,
                "time": v.created_at.isoformat(),
            }
            for v in votes
        ],
        "comments": [
            {
                "round": c.round,
                "output": names.get(c.output_id) if c.output_id else None,
                "author": c.author,
                "visibility": c.visibility.value,
                "body": c.body,
                "time": c.created_at.isoformat(),
            }
            for c in comments
            if not shared_only or c.visibility == Visibility.SHARED
        ],
    }


def rules_version(rules: dict[str, Any] | None) -> str | None:
    """A short, stable name of a rule set: SHA-256 of its values (notes left out)."""
    if not isinstance(rules, dict):
        return None
    values = {k: v for k, v in rules.items() if k != "notes"}
    return _sha(json.dumps(values, sort_keys=True, separators=(",", ":")).encode())[:16]


def _how_decided(
    out: ExportOutput, request: ExportRequest, votes: Sequence[ReviewVote]
) -> dict[str, Any]:
    """How one output was decided, as the audit events say: automatically under named rules,
    or by which reviewers (with who computed its numbers)."""
    report = json.loads(out.report or "{}")
    rules = report.get("rules") if isinstance(report, dict) else None
    entry: dict[str, Any] = {
        "output": out.name,
        "computed_by": out.computed_by,
        "check": out.check_status,
        "decision": out.decision.value if out.decision else None,
    }
    if out.plan_sha256:
        entry["plan_sha256"] = out.plan_sha256
    if out.computed_by == WORKSPACE:
        entry["notice"] = WORKSPACE_NOTICE
    if request.auto_released:
        entry["how"] = "automatically"
        entry["rules"] = {
            "version": rules_version(rules),
            "sources": (rules or {}).get("sources", []),
            "auto_release": (rules or {}).get("auto_release"),
        }
    else:
        entry["how"] = "by reviewers"
        entry["reviewers"] = sorted({v.reviewer for v in votes if v.output_id == out.id})
        entry["decided_by"] = request.decided_by
    return entry


def detail(session: Session, actor: User, request: ExportRequest) -> dict[str, Any]:
    """A request as the actor may see it: outputs with their check, reasons per failing cell,
    votes and comments (private notes only for reviewers)."""
    project = project_of(session, request)
    perms.check_user_can_view(session, actor, request, project)
    reviewer = perms.user_can_review(session, actor, request, project)
    data = summary(request, project)
    decisions = pending_decisions(session, request) if request.status == S.IN_REVIEW else {}
    data["outputs"] = [
        {
            "name": o.name,
            "kind": o.kind,
            "justification": o.justification,
            "checkable": o.checkable,
            "check_status": o.check_status,
            "computed_by": o.computed_by,
            "notice": WORKSPACE_NOTICE if o.computed_by == WORKSPACE else None,
            "reasons": json.loads(o.reasons),
            "report": json.loads(o.report),
            "decision": o.decision.value if o.decision else None,
            "approvals_needed": approvals_needed(o),
            "pending": decisions.get(o.name) if isinstance(decisions.get(o.name), str) else None,
            "files": [
                {
                    "role": f.role,
                    "name": f.name,
                    "sha256": f.sha256,
                    "size": f.size,
                    "media_type": f.media_type,
                }
                for f in o.files
            ],
        }
        for o in _current(request)
    ]
    data["review"] = review_record(session, request, shared_only=not reviewer)
    data["bundle_sha256"] = request.bundle_sha256
    data["viewer_is_reviewer"] = reviewer
    return data


def output_file(
    session: Session, actor: User, request: ExportRequest, output_name: str
) -> tuple[Path, str]:
    """A frozen output file for a reviewer to look at (the author sees their own)."""
    project = project_of(session, request)
    perms.check_user_can_view(session, actor, request, project)
    out = _output(request, output_name)
    main = next(f for f in out.files if f.role == "output")
    return data_storage().path(main.path), main.media_type
