"""Files through one interface: where SPE keeps data, and how it writes it atomically.

Today a local directory (``SPE_DATA_DIR``); a shared volume on Kubernetes. Every write goes to a
temporary name and is renamed into place, so a killed writer leaves nothing visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from spe.config import get_settings


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, relative: str) -> Path:
        full = (self.root / relative).resolve()
        if self.root.resolve() not in full.parents and full != self.root.resolve():
            raise ValueError(f"{relative!r} leaves the storage root")
        return full

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    @contextlib.contextmanager
    def atomic_dir(self, relative: str) -> Iterator[Path]:
        """Yield a fresh temporary directory that replaces ``relative`` when the block ends."""
        final = self.path(relative)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            yield tmp
            for child in tmp.iterdir():
                _fsync(child)
            _fsync(tmp)
            if final.exists():
                old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove_tree(self, relative: str) -> list[tuple[str, int, str]]:
        """Delete a directory; returns (path, bytes, sha256) of every file removed."""
        target = self.path(relative)
        removed = []
        if target.exists():
            for file in sorted(p for p in target.rglob("*") if p.is_file()):
                removed.append(
                    (str(file.relative_to(self.root)), file.stat().st_size, sha256_file(file))
                )
            shutil.rmtree(target)
        return removed

    def clean_stale_temporaries(self, relative_dir: str) -> None:
        folder = self.path(relative_dir)
        if folder.exists():
            for child in folder.iterdir():
                if child.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(child, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_storage() -> LocalStorage:
    settings = get_settings()
    return LocalStorage(settings.data_dir)  # type: ignore[arg-type]
