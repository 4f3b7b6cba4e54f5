"""Copying a researcher's outputs out of the outbox, safely, and checking each is what it claims.

The control plane copies the files itself: regular files only (no symlinks, no hard links, no
devices), names without paths, size limits checked while copying, and each copy's content checked
against its type. A file that fails leaves nothing behind (the caller copies into a temporary
folder that is renamed into place only when every file passed).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from spe.exports.errors import ExportInputError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Extension -> media type of every kind of output the control plane accepts.
MEDIA_TYPES = {
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
}
# Only as evidence next to an output recorded by spe.analysis; never released.
EVIDENCE_TYPES = {".parquet": "application/vnd.apache.parquet"}
SIDECAR_SUFFIX = ".spe.json"

ZIP_MAX_ENTRIES = 1000
ZIP_MAX_RATIO = 100
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CopiedFile:
    name: str
    media_type: str
    size: int
    sha256: str
    path: Path


def check_name(name: str) -> str:
    """A plain file name: letters, digits, '.', '_' and '-'; no folders, no '..'."""
    if not isinstance(name, str) or not name:
        raise ExportInputError("An output needs a file name.")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        raise ExportInputError(
            f"{name!r} is not a plain file name: names may not contain '/', '\\' or '..'; put "
            "the file directly in the outbox and give its name."
        )
    if not SAFE_NAME.match(name):
        raise ExportInputError(
            f"{name!r} is not an accepted file name: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit)."
        )
    return name


def media_type_of(name: str, *, evidence: bool = False) -> str:
    lower = name.lower()
    if lower.endswith(SIDECAR_SUFFIX):
        return "application/json"
    suffix = Path(lower).suffix
    if evidence and suffix in EVIDENCE_TYPES:
        return EVIDENCE_TYPES[suffix]
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix]
    accepted = ", ".join(sorted(MEDIA_TYPES))
    raise ExportInputError(
        f"{name}: files of type {suffix or '(none)'!r} cannot be exported; accepted: {accepted}. "
        "Save the result as one of those."
    )


def open_outbox(folder: Path) -> int:
    """A descriptor of the outbox folder itself, refusing a symlink in its place."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ExportInputError(
            f"There is no outbox at {folder}; save outputs there first."
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ExportInputError(
                f"The outbox {folder} is not a plain folder (a link or a file); outputs are "
                "copied only from the real outbox folder."
            ) from None
        raise ExportInputError(f"The outbox {folder} cannot be opened ({exc.strerror}).") from None


def copy_file(
    outbox_fd: int,
    name: str,
    dest_dir: Path,
    *,
    max_bytes: int,
    evidence: bool = False,
) -> CopiedFile:
    """Copy one regular file from the outbox into ``dest_dir``, hashing it, then check its type."""
    check_name(name)
    media_type = media_type_of(name, evidence=evidence)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=outbox_fd)
    except FileNotFoundError:
        raise ExportInputError(f"{name}: there is no such file in the outbox.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ExportInputError(
                f"{name} is a symbolic link; only regular files are exported. Copy the content "
                "into a file of its own."
            ) from None
        raise ExportInputError(f"{name} cannot be opened ({exc.strerror}).") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            what = "a folder" if stat.S_ISDIR(before.st_mode) else "a device, pipe or socket"
            raise ExportInputError(f"{name} is {what}; only regular files are exported.")
        if before.st_nlink != 1:
            raise ExportInputError(
                f"{name} has {before.st_nlink} hard links; a hard link could point at data, so "
                "only files with one name are exported. Save a fresh copy."
            )
        if before.st_size > max_bytes:
            raise ExportInputError(
                f"{name} is {_size(before.st_size)}, more than the {_size(max_bytes)} an export "
                "file may be; export a smaller summary."
            )
        if before.st_size == 0:
            raise ExportInputError(f"{name} is empty; there is nothing to export.")
        digest = hashlib.sha256()
        target = dest_dir / name
        written = 0
        with open(target, "xb") as out:
            while block := os.read(fd, _CHUNK):
                written += len(block)
                if written > max_bytes:
                    raise ExportInputError(
                        f"{name} grew beyond {_size(max_bytes)} while it was copied; export it "
                        "when it is complete."
                    )
                digest.update(block)
                out.write(block)
        after = os.fstat(fd)
        if written != before.st_size or after.st_mtime_ns != before.st_mtime_ns:
            raise ExportInputError(
                f"{name} changed while it was copied; export it again when it is complete."
            )
    finally:
        os.close(fd)
    check_content(target, name, media_type)
    return CopiedFile(name, media_type, written, digest.hexdigest(), target)


def check_content(path: Path, name: str, media_type: str) -> None:
    """Refuse a file whose content is not what its name says, with the reason."""
    checker = _CHECKERS.get(media_type)
    if checker is not None:
        checker(path, name)


def _text(path: Path, name: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise ExportInputError(f"{name} is not text: it contains NUL bytes.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportInputError(
            f"{name} is not UTF-8 text (byte {exc.start} is not valid); save it as UTF-8."
        ) from None


def _check_text(path: Path, name: str) -> None:
    _text(path, name)


def _check_csv(path: Path, name: str) -> None:
    text = _text(path, name)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ExportInputError(f"{name} does not parse as CSV: {exc}.") from None
    rows = [r for r in rows if r]
    if not rows:
        raise ExportInputError(f"{name} has no rows; a CSV output needs at least a header.")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ExportInputError(
                f"{name} does not parse as CSV: row {number} has {len(row)} fields, the header "
                f"has {width}."
            )


def _check_json(path: Path, name: str) -> None:
    try:
        json.loads(_text(path, name))
    except json.JSONDecodeError as exc:
        raise ExportInputError(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}."
        ) from None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, name: str) -> None:
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ExportInputError(f"{name} is not a PNG image: it lacks the PNG signature.")
    pos, first, seen_end = 8, True, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        if (
            zlib.crc32(data[pos + 4 : pos + 8 + length])
            != struct.unpack(">I", data[end - 4 : end])[0]
        ):
            raise ExportInputError(f"{name} is a damaged PNG image: chunk {kind!r} fails its CRC.")
        if first and kind != b"IHDR":
            break
        first = False
        pos = end
        if kind == b"IEND":
            seen_end = True
            break
    if first or not seen_end:
        raise ExportInputError(f"{name} is not a complete PNG image; save the picture again.")
    if pos != len(data):
        raise ExportInputError(
            f"{name} has {len(data) - pos} bytes after the end of the PNG image; a picture may "
            "not carry hidden content."
        )


def _check_jpeg(path: Path, name: str) -> None:
    data = path.read_bytes()
    if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ExportInputError(f"{name} is not a complete JPEG image; save the picture again.")


def _check_pdf(path: Path, name: str) -> None:
    data = path.read_bytes()
    if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
        raise ExportInputError(f"{name} is not a complete PDF document.")


def _check_parquet(path: Path, name: str) -> None:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise ExportInputError(f"{name} is not a readable Parquet file ({exc}).") from None


def _check_zip(path: Path, name: str) -> None:
    """An archive: plain names, no links or nested archives, and no zip bomb.

    Entry sizes in the archive's header can lie, so every entry is decompressed with a cap.
    """
    limit = path.stat().st_size * ZIP_MAX_RATIO
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportInputError(f"{name} is not a readable zip archive ({exc}).") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > ZIP_MAX_ENTRIES:
            raise ExportInputError(
                f"{name} holds {len(entries)} files; an archive may hold at most "
                f"{ZIP_MAX_ENTRIES}. Export fewer, larger files."
            )
        total = 0
        for entry in entries:
            parts = entry.filename.split("/")
            if entry.filename.startswith(("/", "\\")) or ".." in parts or "\\" in entry.filename:
                raise ExportInputError(
                    f"{name} holds {entry.filename!r}, a path that leaves the archive; refused."
                )
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise ExportInputError(f"{name} holds a symbolic link ({entry.filename}); refused.")
            if entry.is_dir():
                continue
            inner = parts[-1]
            if Path(inner.lower()).suffix == ".zip":
                raise ExportInputError(
                    f"{name} holds another archive ({entry.filename}); export its files directly."
                )
            media_type_of(inner)  # the same types as loose files
            try:
                with archive.open(entry) as stream:
                    while block := stream.read(_CHUNK):
                        total += len(block)
                        if total > limit:
                            raise ExportInputError(
                                f"{name} expands to more than {ZIP_MAX_RATIO} times its size (a "
                                "zip bomb, or data that should not be exported); refused."
                            )
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise ExportInputError(f"{name} is a damaged zip archive ({exc}).") from None


_CHECKERS = {
    "text/csv": _check_csv,
    "text/plain": _check_text,
    "text/markdown": _check_text,
    "application/json": _check_json,
    "image/png": _check_png,
    "image/jpeg": _check_jpeg,
    "application/pdf": _check_pdf,
    "application/zip": _check_zip,
    "application/vnd.apache.parquet": _check_parquet,
}


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
