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


_TEXT = st.text(
    alphabet=st.sampled_from(["a", "0", " ", "\t", "\x00", "\x1b", "\x7f", "\u0085", "°", "ø"]),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=20), st.integers(0, 5))
def test_control_rows_match_python_wherever_the_array_is_sliced(values, cut) -> None:
    """The byte pre-check may skip the search only where Python finds no control character
    (tab allowed), whatever the array's offset into its buffers."""
    import pyarrow as pa

    from spe.ingest.policy import CONTROL_CHARACTERS

    col = pa.array(["pad"] * cut + values, pa.string()).slice(cut)
    found = pipeline._control_rows(col)
    expected = [v is not None and CONTROL_CHARACTERS.search(v) is not None for v in values]
    if found is None:
        assert not any(expected)
    else:
        assert found.tolist() == expected


_CODES = st.sampled_from(["0301", "4601", "03", "0", "ø1", "03011", "abcdefgh", "abcdefghi"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_CODES, min_size=1, max_size=5, unique=True),
    st.lists(st.one_of(st.none(), st.just(""), _CODES), min_size=1, max_size=30),
    st.integers(0, 3),
)
def test_code_list_membership_matches_python_for_any_widths_nulls_and_slices(
    codes, values, cut
) -> None:
    """Membership by Arrow's is_in agrees with plain set membership (nulls, empties, slices)."""
    import pyarrow as pa

    col = pipeline._empty_to_null(pa.array(["0301"] * cut + values, pa.string()).slice(cut))
    inside = pipeline._inside(col, pipeline._value_set(tuple(codes)))
    assert inside.tolist() == [v is not None and v != "" and v in codes for v in values]


def test_int_code_list_compares_numbers() -> None:
    import pyarrow as pa

    col = pa.array([2019, None, 2018, 2020], pa.int64())
    value_set = pipeline._value_set((2019, 2020))
    assert pipeline._inside(col, value_set).tolist() == [True, False, False, True]
