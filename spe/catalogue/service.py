"""The catalogue as people and machines read it: list, show, and DCAT-AP JSON-LD; and the
withdrawal of a dataset version by its data holder (crypto-shredding, a signed certificate).

It shows what a dataset is (variables with their declared code lists and bins, size, format,
coverage, conditions, versions), never what is in it: no minimum, maximum, observed category or
any other statistic of a variable. Code lists come from the policy, not the data.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import User
from spe.accounts.permissions import Action, Target, check_can
from spe.audit import record, state_change
from spe.audit.canonical import canonical_json
from spe.catalogue.models import Dataset, DatasetVersion
from spe.db.base import utcnow
from spe.errors import NotFound, SPEError
from spe.ingest.policy import (
    ColumnClass,
    ColumnPolicy,
    ColumnType,
    Generalisation,
    column_kind,
    generalised_categories,
)

_ACCESS_RIGHTS = "http://publications.europa.eu/resource/authority/access-right/RESTRICTED"
_FORMAT_PARQUET = "http://publications.europa.eu/resource/authority/file-type/PARQUET"


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound(f"There is no dataset {name!r} in the catalogue.")
    return dataset


_TEXT_CLASSES = ("quasi_identifier", "attribute")


def variable_domains(version: DatasetVersion) -> dict[str, dict[str, Any]]:
    """Per held variable of a version: its declared ``categories`` and ``bins`` (None when the
    policy declares none) and whether it is ``free_text`` (text without a code list, never a
    grouping key). They are the code lists the ingest enforced, kept in its report."""
    report = json.loads(version.report) if version.report else {}
    declared = report.get("code_lists") or {}
    out = {}
    for v in version.variables:
        entry = declared.get(v.name) or {}
        categories = entry.get("categories")
        out[v.name] = {
            "categories": categories,
            "bins": entry.get("bins"),
            "free_text": (
                v.classification in _TEXT_CLASSES and v.type == "string" and categories is None
            ),
        }
    return out


_HELD_TYPES = {
    "string": ColumnType.STRING,
    "int64": ColumnType.INT,
    "float64": ColumnType.FLOAT,
    "date32[day]": ColumnType.DATE,
}


def granted_column(
    version: DatasetVersion, name: str, how: Generalisation | None
) -> dict[str, Any]:
    """A held variable as a grant with generalisation ``how`` gives it: its ``kind`` (int,
    float, string, date or year), ``categories`` and ``bins``, from what the version's ingest
    recorded (no need for the policy file to be unchanged since)."""
    variable = next((v for v in version.variables if v.name == name), None)
    if variable is None:
        raise NotFound(f"The dataset version has no variable {name!r}.")
    domain = variable_domains(version)[name]
    held = Generalisation(variable.generalisation) if variable.generalisation else None
    column = ColumnPolicy(
        name,
        ColumnClass(variable.classification),
        ColumnType.DATE
        if held == Generalisation.YEAR
        else _HELD_TYPES.get(variable.type, ColumnType.STRING),
        generalise=held,
        categories=tuple(domain["categories"]) if domain["categories"] is not None else None,
    )
    categories = generalised_categories(column, how)
    return {
        "kind": column_kind(column, how),
        "categories": list(categories) if categories is not None else None,
        "bins": domain["bins"],
    }


def describe(dataset: Dataset) -> dict[str, Any]:
    """The public description of a dataset (the information point's entry)."""
    latest = dataset.latest
    domains = variable_domains(latest) if latest else {}
    return {
        "name": dataset.name,
        "title": dataset.title,
        "description": dataset.description,
        "holder": dataset.holder.name,
        "conditions": dataset.conditions,
        "access": dataset.access,
        "format": "Parquet (pseudonymised)",
        "rows": latest.row_count if latest else 0,
        "size_bytes": latest.size_bytes if latest else 0,
        "temporal_coverage": latest.temporal_coverage if latest else "",
        "version": latest.version if latest else None,
        "variables": [
            {
                "name": v.name,
                "type": v.type,
                "classification": v.classification,
                "generalisation": v.generalisation,
                "description": v.description,
                **domains[v.name],
            }
            for v in (latest.variables if latest else [])
        ],
        "versions": [
            {
                "version": v.version,
                "created_at": v.created_at.isoformat(),
                "rows": v.row_count,
                "rejected": v.rejected_count,
                "source_sha256": v.source_sha256,
            }
            for v in dataset.versions
        ],
        "how_to_apply": (
            f"Apply for a project at {dataset.holder.name} naming this dataset and the variables "
            "you need; the data holder decides within two months (DGA Art. 9)."
        ),
    }


def dcat_jsonld(datasets: list[Dataset], base: str = "urn:spe:") -> dict[str, Any]:
    """The catalogue as DCAT-AP JSON-LD."""
    entries = []
    for ds in datasets:
        d = describe(ds)
        entry: dict[str, Any] = {
            "@id": f"{base}dataset:{ds.name}",
            "@type": "dcat:Dataset",
            "dct:identifier": ds.name,
            "dct:title": {"@value": d["title"], "@language": "en"},
            "dct:description": {"@value": d["description"], "@language": "en"},
            "dct:publisher": {"@type": "foaf:Agent", "foaf:name": d["holder"]},
            "dct:accessRights": {"@id": _ACCESS_RIGHTS},
            "dct:rights": {"@type": "dct:RightsStatement", "rdfs:label": d["conditions"]},
            "dcat:version": str(d["version"]) if d["version"] is not None else None,
            "dcat:distribution": [
                {
                    "@type": "dcat:Distribution",
                    "dct:format": {"@id": _FORMAT_PARQUET},
                    "dcat:byteSize": {
                        "@value": str(d["size_bytes"]),
                        "@type": "xsd:nonNegativeInteger",
                    },
                    "dct:accessRights": {"@id": _ACCESS_RIGHTS},
                    "spe:rows": d["rows"],
                }
            ],
            "spe:variable": [
                {
                    "spe:name": v["name"],
                    "spe:type": v["type"],
                    "spe:classification": v["classification"],
                    "dct:description": v["description"],
                    **({"spe:categories": v["categories"]} if v["categories"] is not None else {}),
                    **({"spe:bins": v["bins"]} if v["bins"] is not None else {}),
                    "spe:freeText": v["free_text"],
                }
                for v in d["variables"]
            ],
        }
        if d["temporal_coverage"]:
            start, _, end = d["temporal_coverage"].partition("/")
            entry["dct:temporal"] = {
                "@type": "dct:PeriodOfTime",
                "dcat:startDate": start,
                "dcat:endDate": end or start,
            }
        entries.append(entry)
    return {
        "@context": {
            "dcat": "http://www.w3.org/ns/dcat#",
            "dct": "http://purl.org/dc/terms/",
            "foaf": "http://xmlns.com/foaf/0.1/",
            "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
            "xsd": "http://www.w3.org/2001/XMLSchema#",
            "spe": "urn:spe:vocab:",
        },
        "@id": f"{base}catalogue",
        "@type": "dcat:Catalog",
        "dct:title": {"@value": "SPE data catalogue", "@language": "en"},
        "dcat:dataset": entries,
    }


def dcat_text(datasets: list[Dataset]) -> str:
    return json.dumps(dcat_jsonld(datasets), indent=2, ensure_ascii=False)


def datasets_of_holder(session: Session, holder_ids: list[Any]) -> list[Dataset]:
    """The datasets these data holders publish."""
    return list(
        session.scalars(
            select(Dataset).where(Dataset.holder_id.in_(holder_ids)).order_by(Dataset.name)
        )
    )


def ingest_reports(dataset: Dataset) -> list[dict[str, Any]]:
    """Each version's ingest report for its data holder: accepted and rejected rows by reason."""
    out = []
    for v in reversed(dataset.versions):
        report = json.loads(v.report) if v.report else {}
        rejected = report.get("rejected")
        out.append(
            {
                "version": v.version,
                "created_at": v.created_at,
                "created_by": v.created_by,
                "source_name": v.source_name,
                "source_sha256": v.source_sha256,
                "source_format": v.source_format,
                "rows": v.row_count,
                "rejected": v.rejected_count,
                "rejected_by_reason": rejected if isinstance(rejected, dict) else {},
                "rejected_by_column": report.get("rejected_by_column") or {},
                "size_bytes": v.size_bytes,
                "quarantine": v.quarantine_path is not None,
                "encryption": v.encryption,
                "withdrawn_at": v.withdrawn_at,
                "withdraw_reason": v.withdraw_reason,
            }
        )
    return out


# --- withdrawal ------------------------------------------------------------------------------

CERTIFICATE_PREFIX = b"SPE dataset withdrawal certificate v1\n"


class CatalogueError(SPEError):
    """A catalogue change is refused; the message says why and what to do."""


@state_change("dataset.withdraw")
def withdraw_version(
    session: Session, actor: User, dataset_name: str, number: int, reason: str
) -> dict[str, Any]:
    """Withdraw version ``number`` of a dataset: destroy its data key (crypto-shredding), delete
    its files, and record a signed certificate in the audit log. Extracts already made for
    projects are the projects' own copies and stay until re-extracted or the project closes."""
    from spe.keys.datasets import destroy_dataset_key
    from spe.keys.signing import checkpoint_signer
    from spe.storage import data_storage

    dataset = get_dataset(session, dataset_name)
    check_can(session, actor, Action.DATASET_INGEST, Target(organisation=dataset.holder))
    version = next((v for v in dataset.versions if v.version == number), None)
    if version is None:
        raise NotFound(f"The dataset {dataset_name!r} has no version {number}.")
    if version.withdrawn_at is not None:
        raise CatalogueError(
            f"Version {number} of {dataset_name!r} was already withdrawn on "
            f"{version.withdrawn_at:%Y-%m-%d} by {version.withdrawn_by}."
        )
    reason = " ".join((reason or "").split())
    if not reason:
        raise CatalogueError(
            f"Say why version {number} of {dataset_name!r} is withdrawn (--reason): the "
            "certificate and the audit log keep it."
        )
    key_destroyed = destroy_dataset_key(session, version.ingest_key)
    folder = version.path.rsplit("/", 1)[0]
    removed = data_storage().remove_tree(folder)
    now = utcnow()
    version.withdrawn_at, version.withdrawn_by = now, actor.username
    version.withdraw_reason = reason[:2000]
    certificate = {
        "kind": "spe-dataset-withdrawal-certificate/v1",
        "dataset": dataset.name,
        "version": number,
        "ingest_key": version.ingest_key,
        "data_sha256": version.data_sha256,
        "encryption": version.encryption,
        "withdrawn_at": now.isoformat(),
        "withdrawn_by": actor.username,
        "reason": version.withdraw_reason,
        "data_key_destroyed": key_destroyed,
        "files": [{"path": p, "bytes": b, "sha256": h} for p, b, h in removed],
    }
    signer = checkpoint_signer(session)
    message = CERTIFICATE_PREFIX + canonical_json(certificate).encode()
    signed = {**certificate, "key_id": signer.key_id, "signature": signer.sign(message)}
    record(
        session, actor, "dataset.withdraw", f"dataset:{dataset.name}", signed, dataset=dataset.name
    )
    return signed


def verify_withdrawal_certificate(certificate: dict[str, Any], public_hex: str) -> bool:
    """True when ``certificate`` (as recorded) is signed by the audit key ``public_hex``."""
    from spe.keys.signing import verify_signature

    body = {k: v for k, v in certificate.items() if k not in ("signature", "key_id")}
    message = CERTIFICATE_PREFIX + canonical_json(body).encode()
    return verify_signature(public_hex, message, str(certificate.get("signature", "")))
