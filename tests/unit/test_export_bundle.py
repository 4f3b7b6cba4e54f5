"""Release bundles: byte-identical for the same inputs, and any change is caught offline."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spe.exports.bundle import BundleFile, build_bundle, verify_bundle
from spe.exports.errors import BundleError
from spe.keys.signing import CheckpointSigner

META = {
    "request": "8f1c0000-0000-4000-8000-000000000001",
    "title": "Income by county",
    "project": "study",
    "holder": "Holder Agency",
    "holder_slug": "holder-agency",
    "author": "researcher",
    "released_at": "2026-11-23T10:00:00Z",
    "reviewers": ["reviewer", "reviewer2"],
}


@pytest.fixture(scope="module")
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


def bundle(signer: CheckpointSigner, tmp_path: Path) -> Path:
    outputs = [
        BundleFile("outputs/table.csv", b"county,count\nA,120\nB,95\n", "text/csv"),
        BundleFile("outputs/plot.png", b"\x89PNG fake but opaque here", "image/png"),
    ]
    report = {"outputs": [{"name": "table.csv", "check_status": "pass"}]}
    review = {"votes": [{"reviewer": "reviewer", "vote": "approve", "comment": "ok"}]}
    path = tmp_path / "release.zip"
    path.write_bytes(build_bundle(META, outputs, report, review, signer))
    return path


def rewrite(path: Path, change) -> None:
    """Rebuild the zip with ``change(name, data) -> data | None`` (None drops the entry)."""
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries:
            new = change(name, data)
            if new is not None:
                z.writestr(name, new)
    path.write_bytes(buffer.getvalue())


def test_an_intact_bundle_verifies_with_the_platform_key(signer, tmp_path):
    path = bundle(signer, tmp_path)
    result = verify_bundle(path, signer.public_hex)
    assert result.ok and result.trusted_key, result.problems
    names = {f["path"] for f in result.files}
    assert names == {
        "outputs/table.csv",
        "outputs/plot.png",
        "disclosure-report.json",
        "review-record.json",
        "ro-crate-metadata.json",
    }
    assert result.request == META["request"] and result.project == "study"


def test_the_same_release_gives_the_same_bytes(signer, tmp_path):
    a = bundle(signer, tmp_path).read_bytes()
    (tmp_path / "b").mkdir()
    b = bundle(signer, tmp_path / "b").read_bytes()
    assert a == b


def test_the_ro_crate_names_the_five_safes_profile_and_every_file(signer, tmp_path):
    with zipfile.ZipFile(bundle(signer, tmp_path)) as z:
        crate = json.loads(z.read("ro-crate-metadata.json"))
    graph = {e["@id"]: e for e in crate["@graph"]}
    assert graph["./"]["conformsTo"]["@id"] == "https://w3id.org/5s-crate/0.4"
    assert graph["outputs/table.csv"]["@type"] == "File"
    assert {p["@id"] for p in graph["./"]["hasPart"]} >= {"outputs/table.csv", "outputs/plot.png"}
    assert graph["#review"]["@type"] == "AssessAction"


@pytest.mark.parametrize(
    ("label", "change", "problem"),
    [
        ("edited output", lambda n, d: d + b"C,3\n" if n == "outputs/table.csv" else d, "SHA-256"),
        ("removed output", lambda n, d: None if n == "outputs/plot.png" else d, "missing"),
        (
            "edited review record",
            lambda n, d: d.replace(b"approve", b"reject") if n == "review-record.json" else d,
            "SHA-256",
        ),
        (
            "edited manifest",
            lambda n, d: d.replace(b"researcher", b"someone-else") if n == "manifest.json" else d,
            "signature",
        ),
        (
            "forged signature",
            lambda n, d: (b"00" * 64) if n == "manifest.sig" else d,
            "signature",
        ),
    ],
)
def test_any_change_to_a_bundle_is_caught(signer, tmp_path, label, change, problem):
    path = bundle(signer, tmp_path)
    rewrite(path, change)
    result = verify_bundle(path, signer.public_hex)
    assert not result.ok, label
    assert any(problem in p for p in result.problems), (label, result.problems)


def test_an_added_file_is_caught(signer, tmp_path):
    path = bundle(signer, tmp_path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("outputs/extra.csv", b"person,income\nA,1\n")
    result = verify_bundle(path, signer.public_hex)
    assert any("not in the signed manifest" in p for p in result.problems)


def test_a_bundle_resigned_with_another_key_is_not_the_platforms(signer, tmp_path):
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    path = bundle(other, tmp_path)
    assert verify_bundle(path).ok  # intact and self-consistent ...
    result = verify_bundle(path, signer.public_hex)  # ... but not signed by this platform
    assert not result.ok and result.trusted_key is False


def test_what_is_not_a_bundle_is_a_sentence(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a release bundle"):
        verify_bundle(junk)
    with pytest.raises(BundleError, match="no file"):
        verify_bundle(tmp_path / "missing.zip")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("a.txt", b"x")
    with pytest.raises(BundleError, match="no signed manifest"):
        verify_bundle(empty)
