"""The ingest's own bookkeeping against plain Python: duplicate detection and the source scan.

Both are streamed (batches, chunks), so the properties drive them with boundaries anywhere:
tiny batches whose slots share bitmap bytes, and scan chunks that cut UTF-8 characters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spe.ingest import pipeline
from spe.ingest.pipeline import IngestError, _Dedup, scan_csv


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), max_size=30), min_size=1, max_size=6))
def test_dedup_marks_exactly_the_rows_whose_slot_was_seen_before(batches: list[list[int]]) -> None:
    dedup = _Dedup(41)
    seen: set[int] = set()
    for batch in batches:
        expected = []
        for slot in batch:
            expected.append(slot in seen)
            seen.add(slot)
        got = dedup.duplicates(np.array(batch, dtype=np.int32)) if batch else np.zeros(0, bool)
        assert got.tolist() == expected


PIECES = [b"a", b"1", b",", b"\n", b"\r\n", "ø".encode(), "€".encode(), "𝄞".encode()]
BROKEN = [b"\xc3", b"\xff", b"\x80", b"\xe2\x82", b"\xed\xa0\x80"]  # cut, invalid, surrogate


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES + BROKEN), max_size=60),
    chunk=st.sampled_from([4, 5, 7, 16, 1 << 20]),
)
def test_scan_finds_the_first_bad_utf8_line_wherever_chunks_end(
    pieces: list[bytes], chunk: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = b"a,b\n" + b"".join(pieces) + b"\n1,2\n"
    path = tmp_path_factory.mktemp("scan") / "x.csv"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "_SCAN_CHUNK", chunk)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            with pytest.raises(IngestError, match=rf"first at line {line}\)"):
                scan_csv(path, "utf-8", ",", 1 << 20)
            assert scan_csv(path, "auto", ",", 1 << 20).encoding == "latin-1"
        else:
            result = scan_csv(path, "auto", ",", 1 << 20)
            assert result.encoding == "utf-8"
            assert result.sha256 == hashlib.sha256(data).hexdigest()
            assert result.lines == data.count(b"\n")
            assert result.header == ["a", "b"]


def test_scan_names_the_line_of_a_character_cut_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\n1,2\n3,\xc3")
    with pytest.raises(IngestError, match=r"first at line 3\)"):
        scan_csv(path, "utf-8", ",", 1 << 20)
