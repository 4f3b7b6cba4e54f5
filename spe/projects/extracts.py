"""Grants and project extracts: each project gets its own minimised, re-pseudonymised copy.

For every granted dataset the project's extract holds only the granted variables, with the
grant's generalisations applied, and the holder-level pseudonym replaced by the project's own
(keyed with the project key): joins work inside a project and nowhere else. Closing a project
destroys its key and its extracts and writes a signed deletion certificate to the audit log.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import User
from spe.accounts.permissions import Action, Target, check_can
from spe.audit import record, state_change
from spe.audit.canonical import canonical_json
from spe.catalogue.models import Dataset, DatasetVersion
from spe.db import transaction
from spe.db.base import utcnow
from spe.errors import NotFound, SPEError
from spe.ingest.pipeline import PERSON_COLUMN, generalise
from spe.ingest.policy import Generalisation
from spe.ingest.store import open_data
from spe.keys.pseudonyms import (
    PERSON_SPACE,
    PROJECT_PSEUDONYM,
    destroy_scope_key,
    ensure_scope_key,
    person_space,
    project_pseudonymiser,
)
from spe.keys.signing import checkpoint_signer
from spe.projects.models import Project, ProjectExtract, ProjectGrant, ProjectStatus
from spe.storage import data_storage, sha256_file

# Which generalisations fit which stored variable types.
_FITS = {Generalisation.YEAR: {"date32[day]"}, Generalisation.COUNTY: {"string"}}


def generalisations_for(column_type: str) -> list[str]:
    """The generalisations a variable of this (Arrow) type can be granted with."""
    return [kind.value for kind, types in _FITS.items() if column_type in types]


class ExtractError(SPEError):
    pass


def _dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound(f"There is no dataset {name!r}; `spe catalogue list` shows them.")
    return dataset


@state_change("project.grant")
def grant_dataset(
    session: Session,
    actor: User,
    project: Project,
    dataset_name: str,
    variables: list[str],
    generalisations: dict[str, str] | None = None,
) -> ProjectGrant:
    """Grant (or change) a project's access to a dataset's variables."""
    check_can(session, actor, Action.PROJECT_GRANT, Target(project=project))
    dataset = _dataset(session, dataset_name)
    if dataset.holder_id != project.holder_id:
        raise ExtractError(
            f"The dataset {dataset_name!r} belongs to another data holder than project "
            f"{project.slug}."
        )
    if project.status == ProjectStatus.CLOSED:
        raise ExtractError(f"Project {project.slug} is closed.")
    latest = dataset.latest
    if latest is None and dataset.versions:
        raise ExtractError(
            f"Every version of {dataset_name!r} was withdrawn; there is nothing to grant until "
            "the data holder publishes a new one."
        )
    if latest is None:
        raise ExtractError(f"The dataset {dataset_name!r} has no version yet.")
    types = {v.name: v.type for v in latest.variables}
    variables = [v for v in dict.fromkeys(variables) if v != PERSON_COLUMN]
    if not variables:
        raise ExtractError("Grant at least one variable (the person pseudonym always comes along).")
    unknown = [v for v in variables if v not in types]
    if unknown:
        raise ExtractError(
            f"The dataset {dataset_name!r} has no variable {unknown[0]!r}; its variables are "
            f"{', '.join(n for n in types if n != PERSON_COLUMN)}."
        )
    gens: dict[str, str] = {}
    for name, how in (generalisations or {}).items():
        if name not in variables:
            raise ExtractError(f"Generalising {name!r} needs it among the granted variables.")
        try:
            kind = Generalisation(how)
        except ValueError:
            raise ExtractError(
                f"Unknown generalisation {how!r} for {name!r}; use year or county."
            ) from None
        if types[name] not in _FITS[kind]:
            raise ExtractError(f"{name!r} ({types[name]}) cannot be generalised to {how}.")
        gens[name] = kind.value
    grant = session.scalar(
        select(ProjectGrant).where(
            ProjectGrant.project_id == project.id, ProjectGrant.dataset_id == dataset.id
        )
    )
    if grant is None:
        grant = ProjectGrant(
            project_id=project.id, dataset_id=dataset.id, granted_by=actor.username
        )
        session.add(grant)
    grant.variables = json.dumps(variables)
    grant.generalisations = json.dumps(gens, sort_keys=True)
    grant.granted_at = utcnow()
    grant.granted_by = actor.username
    session.flush()
    record(
        session,
        actor,
        "project.grant",
        f"project:{project.slug}",
        {"dataset": dataset_name, "variables": variables, "generalisations": gens},
        project=project.slug,
        dataset=dataset_name,
    )
    return grant


@dataclass
class ExtractResult:
    project: str
    dataset: str
    version: int
    created: bool
    rows: int
    path: str
    seconds: float = 0.0


def _extract_key(version: DatasetVersion, grant: ProjectGrant, project_id: str) -> str:
    material = "\n".join(
        [
            str(version.dataset_id),
            version.data_sha256,
            grant.variables,
            grant.generalisations,
            project_id,
            "v2",  # v2: the extract folder holds catalogue.json beside data.parquet
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()


def extract(
    project_slug: str, dataset_name: str, progress: Callable[[int, int], None] | None = None
) -> ExtractResult:
    """Build (or find) the project's extract of a granted dataset; idempotent."""
    started = time.perf_counter()
    with transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        if project is None:
            raise NotFound(f"There is no project {project_slug!r}.")
        if project.status != ProjectStatus.APPROVED:
            raise ExtractError(
                f"Project {project_slug} is {project.status.value}; only approved projects get "
                "data."
            )
        dataset = _dataset(session, dataset_name)
        grant = session.scalar(
            select(ProjectGrant).where(
                ProjectGrant.project_id == project.id, ProjectGrant.dataset_id == dataset.id
            )
        )
        if grant is None:
            raise ExtractError(f"Project {project_slug} has no grant for {dataset_name!r}.")
        version = dataset.latest
        if version is None:
            raise ExtractError(
                f"Every version of {dataset_name!r} was withdrawn; there is nothing to extract "
                "until the data holder publishes a new one."
            )
        # Opened here, decrypted chunk by chunk in memory as it is read (never a plain copy).
        source_file = open_data(session, version)
        project_id = str(project.id)
        if ensure_scope_key(session, PROJECT_PSEUDONYM, project_id):
            record(
                session,
                "system:keys",
                "key.create",
                f"key:{PROJECT_PSEUDONYM}:{project_slug}",
                project=project_slug,
            )
        key = _extract_key(version, grant, project_id)
        done = session.scalar(
            select(ProjectExtract).where(
                ProjectExtract.project_id == project.id, ProjectExtract.extract_key == key
            )
        )
        if done is not None and done.deleted_at is None:
            return ExtractResult(
                project_slug, dataset_name, version.version, False, done.row_count, done.path
            )
        pseudonymiser = project_pseudonymiser(session, project_id)
        holder_id = str(project.holder_id)
        if ensure_scope_key(session, PERSON_SPACE, holder_id):
            record(
                session,
                "system:keys",
                "key.create",
                f"key:{PERSON_SPACE}:{holder_id}",
                project=project_slug,
            )
        space = person_space(session, holder_id)
        # What a plan may use of this extract, for the workspace's preview (the server builds
        # its own from the database and never reads this file back).
        source_json = _source_json(session, project.slug, dataset_name, version, grant)
        variables = json.loads(grant.variables)
        gens = {k: Generalisation(v) for k, v in json.loads(grant.generalisations).items()}
        number, version_id = version.version, version.id
    storage = data_storage()
    relative = f"projects/{project_id}/extracts/{dataset_name}/{key[:24]}"
    storage.clean_stale_temporaries(f"projects/{project_id}/extracts/{dataset_name}")
    source = pq.ParquetFile(source_file)
    total = source.metadata.num_rows
    rows = 0
    # The audit's person map: never mounted in a workspace (a folder of its own beside the
    # extracts), it turns the project's pseudonyms into the holder's person space on the server.
    map_relative = f"projects/{project_id}/person-space/{dataset_name}/{key[:24]}"
    with storage.atomic_dir(relative) as tmp, storage.atomic_dir(map_relative) as map_tmp:
        writer = None
        map_writer = None
        try:
            for batch in source.iter_batches(
                batch_size=262144, columns=[PERSON_COLUMN, *variables]
            ):
                person = batch.column(0)
                blocks = _blocks(person)
                hexes = pseudonymiser.pseudonyms(blocks)
                arrays = [_hex_strings(hexes)]
                mapped = pa.Table.from_arrays(
                    [arrays[0], pa.array(space.keys(blocks), type=pa.int64())],
                    names=[PERSON_COLUMN, "space"],
                )
                if map_writer is None:
                    map_writer = pq.ParquetWriter(
                        map_tmp / "persons.parquet", mapped.schema, compression="zstd"
                    )
                map_writer.write_table(mapped)
                for i, name in enumerate(variables, start=1):
                    col = batch.column(i)
                    if name in gens:
                        col = generalise(col, gens[name])
                    arrays.append(col)
                table = pa.Table.from_arrays(arrays, names=[PERSON_COLUMN, *variables])
                if writer is None:
                    writer = pq.ParquetWriter(
                        tmp / "data.parquet", table.schema, compression="zstd"
                    )
                writer.write_table(table)
                rows += batch.num_rows
                if progress:
                    progress(rows, total)
        finally:
            if writer is not None:
                writer.close()
            if map_writer is not None:
                map_writer.close()
            source_file.close()
        (tmp / "catalogue.json").write_text(
            json.dumps(source_json, sort_keys=True, ensure_ascii=False, indent=1) + "\n",
            "utf-8",
        )
        data_sha = sha256_file(tmp / "data.parquet")
        size = (tmp / "data.parquet").stat().st_size
    with transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        assert project is not None
        again = session.scalar(
            select(ProjectExtract).where(
                ProjectExtract.project_id == project.id, ProjectExtract.extract_key == key
            )
        )
        if again is not None:
            again.deleted_at, again.current = None, True
        else:
            for old in session.scalars(
                select(ProjectExtract).where(
                    ProjectExtract.project_id == project.id,
                    ProjectExtract.dataset_id == dataset.id,
                    ProjectExtract.current.is_(True),
                )
            ):
                old.current = False
            session.add(
                ProjectExtract(
                    project_id=project.id,
                    dataset_id=dataset.id,
                    dataset_version_id=version_id,
                    extract_key=key,
                    path=f"{relative}/data.parquet",
                    data_sha256=data_sha,
                    row_count=rows,
                    size_bytes=size,
                )
            )
        record(
            session,
            "system:extract",
            "project.extract",
            f"project:{project_slug}",
            {
                "dataset": dataset_name,
                "version": number,
                "variables": variables,
                "generalisations": {k: v.value for k, v in gens.items()},
                "rows": rows,
                "data_sha256": data_sha,
            },
            project=project_slug,
            dataset=dataset_name,
        )
    return ExtractResult(
        project_slug,
        dataset_name,
        number,
        True,
        rows,
        f"{relative}/data.parquet",
        round(time.perf_counter() - started, 3),
    )


def _hex_strings(hexes: Any) -> pa.Array:
    """numpy 'S32' → a pyarrow string array, built straight from the buffers."""
    import numpy as np

    n = len(hexes)
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(hexes.tobytes()))


def _blocks(person: pa.Array) -> Any:
    import numpy as np

    buffer = person.buffers()[1]
    raw = np.frombuffer(buffer, dtype=np.uint8)
    offset = person.offset * 16
    return raw[offset : offset + len(person) * 16].reshape(-1, 16)


def granted_datasets(session: Session, project: Project) -> list[str]:
    return list(
        session.scalars(
            select(Dataset.name)
            .join(ProjectGrant, ProjectGrant.dataset_id == Dataset.id)
            .where(ProjectGrant.project_id == project.id)
            .order_by(Dataset.name)
        )
    )


def current_extracts(session: Session, project: Project) -> dict[str, ProjectExtract]:
    rows = session.scalars(
        select(ProjectExtract).where(
            ProjectExtract.project_id == project.id,
            ProjectExtract.current.is_(True),
            ProjectExtract.deleted_at.is_(None),
        )
    )
    names = {d.id: d.name for d in session.scalars(select(Dataset))}
    return {names[r.dataset_id]: r for r in rows}


def workspace_mounts(session: Session, project: Project) -> dict[str, Path]:
    """Per granted dataset, the folder of the project's current extract (holding data.parquet),
    to be mounted read-only at ``<workspace data dir>/<dataset>`` in the project's workspaces."""
    storage = data_storage()
    return {
        name: storage.path(row.path).parent
        for name, row in sorted(current_extracts(session, project).items())
    }


def destroy_project_data(session: Session, actor: User | str, project: Project) -> dict[str, Any]:
    """Crypto-shred the project key, delete its extracts, and record a signed deletion
    certificate. Part of closing a project (the caller's transaction)."""
    project_id = str(project.id)
    key_destroyed = destroy_scope_key(session, PROJECT_PSEUDONYM, project_id)
    removed = data_storage().remove_tree(f"projects/{project_id}")
    homes = _remove_workspaces(session, actor, project)
    for row in session.scalars(
        select(ProjectExtract).where(ProjectExtract.project_id == project.id)
    ):
        row.deleted_at, row.current = utcnow(), False
    certificate = {
        "kind": "spe-deletion-certificate/v1",
        "project": project.slug,
        "project_id": project_id,
        "destroyed_at": utcnow().isoformat(),
        "destroyed_by": actor if isinstance(actor, str) else actor.username,
        "project_key_destroyed": key_destroyed,
        "files": [{"path": p, "bytes": b, "sha256": h} for p, b, h in removed],
        "workspace_files": [{"path": p, "bytes": b, "sha256": h} for p, b, h in homes],
    }
    signer = checkpoint_signer(session)
    message = b"SPE deletion certificate v1\n" + canonical_json(certificate).encode()
    signed = {**certificate, "key_id": signer.key_id, "signature": signer.sign(message)}
    record(
        session,
        actor,
        "project.deletion_certificate",
        f"project:{project.slug}",
        signed,
        project=project.slug,
    )
    return signed


def _remove_workspaces(
    session: Session, actor: User | str, project: Project
) -> list[tuple[str, int, str]]:
    """Stop the project's workspaces and delete their homes (outboxes included)."""
    from spe.config import get_settings
    from spe.storage import LocalStorage
    from spe.workspaces.models import Workspace
    from spe.workspaces.registry import workspace_stopped

    for name in session.scalars(
        select(Workspace.name).where(
            Workspace.project_id == project.id, Workspace.running.is_(True)
        )
    ).all():
        workspace_stopped(session, actor, name, f"project {project.slug} closed")
    root = Path(get_settings().state_dir).resolve() / "workspaces"
    return LocalStorage(root).remove_tree(project.slug) if root.is_dir() else []


def grants_of(session: Session, project: Project) -> list[dict[str, Any]]:
    """What the project may use: per dataset, the variables and their generalisations."""
    rows = session.execute(
        select(Dataset.name, Dataset.access, ProjectGrant)
        .join(ProjectGrant, ProjectGrant.dataset_id == Dataset.id)
        .where(ProjectGrant.project_id == project.id)
        .order_by(Dataset.name)
    )
    extracts = current_extracts(session, project)
    return [
        {
            "dataset": name,
            "access": access,
            "variables": json.loads(grant.variables),
            "generalisations": json.loads(grant.generalisations),
            "granted_at": grant.granted_at,
            "granted_by": grant.granted_by,
            "extract_rows": extracts[name].row_count if name in extracts else None,
            "extract_version": str(extracts[name].dataset_version_id) if name in extracts else None,
        }
        for name, access, grant in rows
    ]


# --- the catalogue a plan is validated against ---------------------------------------------------


def _source_columns(
    session: Session, version: DatasetVersion, grant: ProjectGrant
) -> dict[str, Any]:
    """The granted columns of a project's extract with their kind and public categories.

    From what the version's ingest recorded (the code lists it enforced), after the policy's
    own and the grant's generalisations; never from today's policy file. A column without
    declared categories can never be a grouping key.
    """
    from spe.analysis.plan import ColumnInfo
    from spe.catalogue.service import granted_column

    gens = {k: Generalisation(v) for k, v in json.loads(grant.generalisations).items()}
    columns: dict[str, Any] = {}
    for name in json.loads(grant.variables):
        found = granted_column(version, name, gens.get(name))
        categories, bins = found["categories"], found["bins"]
        columns[name] = ColumnInfo(
            name=name,
            kind=found["kind"],
            categories=tuple(categories) if categories else None,
            bins=tuple(float(b) for b in bins) if bins else None,
        )
    return columns


def _source_json(
    session: Session, slug: str, dataset: str, version: DatasetVersion, grant: ProjectGrant
) -> dict[str, Any]:
    from spe.analysis.plan import SourceInfo

    source = SourceInfo(
        dataset=dataset,
        version=version.version,
        path=None,
        person_column=PERSON_COLUMN,
        columns=_source_columns(session, version, grant),
    )
    return {**source.to_json(), "project": slug}


def plan_catalogue(session: Session, project: Project) -> Any:
    """What a plan of ``project`` may use: each row-level dataset's current extract (version,
    file, granted columns with kinds and categories). Aggregate-only datasets are not in it:
    their rows are answered only through DP."""
    from spe.analysis.plan import Catalogue, SourceInfo
    from spe.dp.service import aggregate_only_datasets

    aggregate_only = set(aggregate_only_datasets(session, project))
    storage = data_storage()
    sources: dict[str, Any] = {}
    for name, row in sorted(current_extracts(session, project).items()):
        if name in aggregate_only:
            continue
        version = session.get(DatasetVersion, row.dataset_version_id)
        grant = session.scalar(
            select(ProjectGrant).where(
                ProjectGrant.project_id == project.id, ProjectGrant.dataset_id == row.dataset_id
            )
        )
        if version is None or grant is None:
            continue
        sources[name] = SourceInfo(
            dataset=name,
            version=version.version,
            path=storage.path(row.path),
            person_column=PERSON_COLUMN,
            columns=_source_columns(session, version, grant),
        )
    return Catalogue(project=project.slug, sources=sources)


def person_space_files(session: Session, project: Project) -> list[Path]:
    """The server's maps from the project's pseudonyms to the holder's person space (one per
    current extract; Parquet files of person_id and space)."""
    storage = data_storage()
    files = []
    for name, row in sorted(current_extracts(session, project).items()):
        key_part = Path(row.path).parent.name
        path = storage.path(f"projects/{project.id}/person-space/{name}/{key_part}/persons.parquet")
        if path.is_file():
            files.append(path)
    return files


def person_space_of(session: Session, project: Project) -> Any:
    """A function from the project's pseudonyms to the holder's person space (int64 keys), for
    the disclosure audit on the server; a pseudonym of no current extract maps to 0 (none)."""
    import numpy as np
    import pandas as pd

    frames = [pq.read_table(path).to_pandas() for path in person_space_files(session, project)]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True).drop_duplicates(PERSON_COLUMN)
    index = pd.Index(table[PERSON_COLUMN].astype(str))
    keys = table["space"].to_numpy(dtype=np.int64)

    def to_space(ids: Any) -> Any:
        found = index.get_indexer(pd.Index(pd.Series(ids).astype(str)))
        return np.where(found >= 0, keys[np.maximum(found, 0)], 0)

    return to_space
