"""Dataset versions at rest: a data key per version (wrapped by the platform key) and sealed files.

A sealed file is a header and AES-256-GCM chunks of a fixed plaintext size. Each chunk's
associated data binds the header (format, chunk size, a random file id), the file's context
(which version, data or quarantine), the chunk's index and whether it is the last, so chunks
cannot be altered, reordered, moved between files or cut off. The reader decrypts chunk by
chunk in memory and gives random access (Parquet reads its footer first): no plaintext copy is
ever on disk. Destroying the version's key (withdrawal) makes its files unreadable for good.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

from spe.keys.platform import KeyStoreError, PlatformKey
from spe.keys.pseudonyms import _raw, _row, destroy_scope_key, ensure_scope_key

DATASET_VERSION = "dataset-version"
ENCRYPTION = "aes-256-gcm-chunked-v1"  # what DatasetVersion.encryption says of sealed files
MAGIC = b"SPEENC1\n"
CHUNK = 1 << 20
_NONCE = 12
_TAG = 16
_HEADER = struct.Struct(">8sI16s")  # magic, chunk size, file id
_LENGTH = struct.Struct(">I")


class DatasetCipher:
    """The data key of one dataset version; seals and opens its files. Its repr shows nothing."""

    __slots__ = ("__aead",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyStoreError("A dataset key must be 32 bytes.")
        self.__aead = AESGCM(raw)

    def __repr__(self) -> str:
        return "DatasetCipher()"

    def __reduce__(self) -> NoReturn:
        raise TypeError("keys cannot be pickled")

    def _seal_into(self, nonce: bytes, data: Any, aad: bytes, out: memoryview) -> None:
        self.__aead.encrypt_into(nonce, data, aad, out)

    def _open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self.__aead.decrypt(nonce, data, aad)


def _aad(header: bytes, context: str, index: int, final: bool) -> bytes:
    return header + context.encode() + b"\x00" + struct.pack(">QB", index, 1 if final else 0)


class SealingWriter(io.RawIOBase):
    """A write-only file that seals what it is given, chunk by chunk, into ``sink``.

    ``sha256`` and ``size`` describe the plaintext (so a version's recorded hash is the same
    whether or not it is encrypted, and the same input still gives the same hash)."""

    def __init__(
        self, cipher: DatasetCipher, sink: BinaryIO, context: str, chunk: int = CHUNK
    ) -> None:
        super().__init__()
        self._cipher, self._sink, self._context, self._chunk = cipher, sink, context, chunk
        self._header = _HEADER.pack(MAGIC, chunk, os.urandom(16))
        sink.write(self._header)
        self._buffer = bytearray()
        # One frame, reused: length, nonce, then the sealed chunk written in place.
        self._frame = bytearray(_LENGTH.size + _NONCE + chunk + _TAG)
        self._index = 0
        self._digest = hashlib.sha256()
        self.size = 0
        self.sha256 = ""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n, pos = len(view), 0
        self._digest.update(view)
        self.size += n
        # A chunk is sealed only once more data follows it: the last is sealed at close, final.
        while len(self._buffer) + n - pos > self._chunk:
            if self._buffer:
                need = self._chunk - len(self._buffer)
                self._buffer += view[pos : pos + need]
                pos += need
                self._emit(self._buffer, final=False)
                self._buffer = bytearray()
            else:  # whole chunks straight from the caller's buffer, without a copy
                self._emit(view[pos : pos + self._chunk], final=False)
                pos += self._chunk
        self._buffer += view[pos:]
        return n

    def _emit(self, plain: Any, final: bool) -> None:
        nonce = os.urandom(_NONCE)
        size = len(plain) + _TAG
        frame = memoryview(self._frame)[: _LENGTH.size + _NONCE + size]
        _LENGTH.pack_into(frame, 0, size)
        frame[_LENGTH.size : _LENGTH.size + _NONCE] = nonce
        aad = _aad(self._header, self._context, self._index, final)
        self._cipher._seal_into(nonce, plain, aad, frame[_LENGTH.size + _NONCE :])
        self._sink.write(frame)
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buffer), final=True)
            self._buffer.clear()
            self.sha256 = self._digest.hexdigest()
            self._sink.flush()
        super().close()


class OpeningReader(io.RawIOBase):
    """A read-only, seekable view of a sealed file's plaintext, opened chunk by chunk in memory."""

    def __init__(self, cipher: DatasetCipher, source: BinaryIO, context: str, name: str) -> None:
        super().__init__()
        self._cipher, self._source, self._context, self.name = cipher, source, context, name
        header = source.read(_HEADER.size)
        if len(header) != _HEADER.size or header[:8] != MAGIC:
            raise KeyStoreError(f"{name} is not a sealed dataset file.")
        _, self._chunk, _ = _HEADER.unpack(header)
        self._header = header
        self._frame = _LENGTH.size + _NONCE + self._chunk + _TAG
        body = os.fstat(source.fileno()).st_size - _HEADER.size
        self._frames = max(1, -(-body // self._frame))
        last = body - (self._frames - 1) * self._frame
        if last < _LENGTH.size + _NONCE + _TAG:
            self._refuse(self._frames - 1, "cut short")
        self._size = (self._frames - 1) * self._chunk + last - (_LENGTH.size + _NONCE + _TAG)
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")
        self._plain(self._frames - 1)  # a file cut short at a chunk's end is refused at once

    def _refuse(self, index: int, what: str) -> NoReturn:
        raise KeyStoreError(
            f"{self.name} does not open: chunk {index} was {what}; the file was altered or "
            "damaged on disk. Restore it from a backup, or ingest the extract again."
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _plain(self, index: int) -> bytes:
        if self._cached[0] == index:
            return self._cached[1]
        final = index == self._frames - 1
        self._source.seek(_HEADER.size + index * self._frame)
        frame = self._source.read(self._frame)
        (length,) = _LENGTH.unpack_from(frame)
        expected = len(frame) - _LENGTH.size - _NONCE
        if length != expected or (not final and length != self._chunk + _TAG):
            self._refuse(index, "cut short or resized")
        nonce = frame[_LENGTH.size : _LENGTH.size + _NONCE]
        try:
            plain = self._cipher._open(
                nonce,
                frame[_LENGTH.size + _NONCE :],
                _aad(self._header, self._context, index, final),
            )
        except InvalidTag:
            self._refuse(index, "altered, moved or cut off")
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._size:
            index, skip = divmod(self._pos, self._chunk)
            plain = self._plain(index)
            piece = plain[skip : skip + len(out) - done]
            out[done : done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done

    def readall(self) -> bytes:
        parts = []
        while self._pos < self._size:
            index, skip = divmod(self._pos, self._chunk)
            piece = self._plain(index)[skip:]
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


def ensure_dataset_key(session: Session, scope: str, platform: PlatformKey | None = None) -> bool:
    """Create the data key of the dataset version ``scope`` if missing; True when created."""
    return ensure_scope_key(session, DATASET_VERSION, scope, platform)


def dataset_cipher(
    session: Session, scope: str, platform: PlatformKey | None = None
) -> DatasetCipher:
    """The data key of a dataset version (refused, with a sentence, once it is destroyed)."""
    return DatasetCipher(_raw(session, DATASET_VERSION, scope, platform))


def dataset_key_destroyed(session: Session, scope: str) -> bool:
    row = _row(session, DATASET_VERSION, scope)
    return row is not None and row.destroyed_at is not None


def destroy_dataset_key(session: Session, scope: str) -> bool:
    """Crypto-shred a dataset version: its files can never be opened again. Callers audit."""
    return destroy_scope_key(session, DATASET_VERSION, scope)


def seal_dataset_stream(
    cipher: DatasetCipher, sink: BinaryIO, context: str, chunk: int = CHUNK
) -> SealingWriter:
    """A file object that seals everything written to it into ``sink`` (close it to finish)."""
    return SealingWriter(cipher, sink, context, chunk)


def open_dataset_stream(cipher: DatasetCipher, path: Path, context: str) -> OpeningReader:
    """The plaintext of a sealed file as a seekable file object; refuses a tampered file."""
    return OpeningReader(cipher, open(path, "rb"), context, path.name)


def is_sealed(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
