"""How a dataset version rests: its data and quarantine files sealed with the version's own key.

Every reader of a holder's dataset version (extraction, the quarantine for the holder, tests)
opens it here, in memory; a withdrawn version, whose key was destroyed, and a plain version
written before encryption at rest are refused with a sentence.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from spe.catalogue.models import DatasetVersion
from spe.errors import SPEError
from spe.keys.datasets import ENCRYPTION, OpeningReader, dataset_cipher, open_dataset_stream
from spe.storage import data_storage

DATA_FILE = "data.parquet"
QUARANTINE_FILE = "quarantine.sealed"


class DatasetUnreadable(SPEError):
    """A dataset version cannot be read: withdrawn, or written in plain before encryption."""

    exit_code = 6


def file_context(dataset: str, ingest_key: str, role: str) -> str:
    """What a sealed file is bound to: its dataset version and its role (data or quarantine)."""
    return f"dataset:{dataset}:{ingest_key}:{role}"


def check_readable(version: DatasetVersion) -> None:
    name, number = version.dataset.name, version.version
    if version.withdrawn_at is not None:
        raise DatasetUnreadable(
            f"Version {number} of {name!r} was withdrawn on {version.withdrawn_at:%Y-%m-%d} by "
            f"{version.withdrawn_by} and its key destroyed; it can no longer be read. Use a "
            "newer version, or ingest the extract again."
        )
    if version.encryption != ENCRYPTION:
        raise DatasetUnreadable(
            f"Version {number} of {name!r} was written in plain before encryption at rest and "
            "is not read any more; ingest its extract again (the new version is encrypted) "
            f"and withdraw version {number} with `spe dataset withdraw {name} {number}`."
        )


def open_data(session: Session, version: DatasetVersion) -> OpeningReader:
    """The version's Parquet file as a seekable file object, decrypted chunk by chunk in memory
    (usable after ``session`` closes)."""
    check_readable(version)
    cipher = dataset_cipher(session, version.ingest_key)
    context = file_context(version.dataset.name, version.ingest_key, "data")
    return open_dataset_stream(cipher, data_storage().path(version.path), context)


def parquet_file(session: Session, version: DatasetVersion) -> pq.ParquetFile:
    return pq.ParquetFile(open_data(session, version))


def read_table(
    session: Session, version: DatasetVersion, columns: list[str] | None = None
) -> pa.Table:
    """The whole version (or some columns) as an Arrow table, read in memory."""
    with open_data(session, version) as fh:
        return pq.read_table(fh, columns=columns)


def read_quarantine_bytes(session: Session, version: DatasetVersion) -> bytes:
    """The version's quarantine file (CSV), opened in memory for the data holder."""
    if not version.quarantine_path:
        return b""
    check_readable(version)
    cipher = dataset_cipher(session, version.ingest_key)
    context = file_context(version.dataset.name, version.ingest_key, "quarantine")
    with open_dataset_stream(cipher, data_storage().path(version.quarantine_path), context) as fh:
        return fh.readall()


def read_version_at(path: str, columns: list[str] | None = None) -> pa.Table:
    """The dataset version stored at ``path`` (as an ingest result names it), read in memory."""
    from sqlalchemy import select

    from spe.db import readonly

    with readonly() as session:
        version = session.scalar(select(DatasetVersion).where(DatasetVersion.path == path))
        if version is None:
            raise DatasetUnreadable(f"No dataset version is stored at {path}.")
        reader = open_data(session, version)
    with reader:
        return pq.read_table(reader, columns=columns)
