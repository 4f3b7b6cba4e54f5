"""Release bundles: a zip of the approved outputs with a manifest of SHA-256 hashes, the
disclosure report, the review record and RO-Crate metadata, signed with the platform's Ed25519
key; and the offline check of one (`spe export verify BUNDLE`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spe.audit.canonical import canonical_json
from spe.exports.errors import BundleError
from spe.keys.signing import CheckpointSigner, key_id_of, verify_signature

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = "spe-release-bundle/1"
FIVE_SAFES_PROFILE = "https://w3id.org/5s-crate/0.4"
_ENTRY = re.compile(r"^(outputs/)?[A-Za-z0-9][A-Za-z0-9._-]{0,159}$")
# A bundle holds small results: anything that expands past this is not ours.
_MAX_EXPANDED = 4 << 30


@dataclass(frozen=True)
class BundleFile:
    """A file to put in the bundle: its path inside the zip and its bytes."""

    path: str
    data: bytes
    media_type: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ro_crate(
    meta: Mapping[str, Any], outputs: Sequence[BundleFile], extra: Sequence[BundleFile]
) -> dict[str, Any]:
    """RO-Crate 1.1 metadata, following the Five Safes RO-Crate profile where it fits."""
    root_parts = [{"@id": f.path} for f in (*outputs, *extra)]
    project_id = f"#project-{meta['project']}"
    author_id = f"#person-{meta['author']}"
    graph: list[dict[str, Any]] = [
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
            "about": {"@id": "./"},
        },
        {
            "@id": "./",
            "@type": "Dataset",
            "name": f"Release of export request {meta['request']}",
            "description": meta["title"],
            "datePublished": meta["released_at"],
            "conformsTo": {"@id": FIVE_SAFES_PROFILE},
            "sourceOrganization": {"@id": project_id},
            "hasPart": root_parts,
            "mentions": [{"@id": "#release"}],
        },
        {"@id": FIVE_SAFES_PROFILE, "@type": "CreativeWork", "name": "Five Safes RO-Crate"},
        {
            "@id": project_id,
            "@type": "Project",
            "name": meta["project"],
            "funder": {"@id": f"#holder-{meta['holder_slug']}"},
        },
        {"@id": f"#holder-{meta['holder_slug']}", "@type": "Organization", "name": meta["holder"]},
        {"@id": author_id, "@type": "Person", "name": meta["author"]},
        {
            "@id": "#release",
            "@type": "CreateAction",
            "name": "Release after disclosure control",
            "agent": {"@id": author_id},
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
            "endTime": meta["released_at"],
            "result": [{"@id": f.path} for f in outputs],
            "instrument": {"@id": "disclosure-report.json"},
        },
    ]
    for reviewer in meta.get("reviewers", []):
        graph.append({"@id": f"#person-{reviewer}", "@type": "Person", "name": reviewer})
    graph.append(
        {
            "@id": "#review",
            "@type": "AssessAction",
            "additionalType": {"@id": "https://w3id.org/shp#DisclosureCheck"},
            "name": "Disclosure check and output review",
            "agent": [{"@id": f"#person-{r}"} for r in meta.get("reviewers", [])]
            or [{"@id": "#spe-automatic-check"}],
            "object": [{"@id": f.path} for f in outputs],
            "result": {"@id": "review-record.json"},
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
        }
    )
    if not meta.get("reviewers"):
        graph.append(
            {
                "@id": "#spe-automatic-check",
                "@type": "SoftwareApplication",
                "name": "SPE automatic disclosure control",
            }
        )
    for f in (*outputs, *extra):
        graph.append(
            {
                "@id": f.path,
                "@type": "File",
                "encodingFormat": f.media_type,
                "contentSize": str(len(f.data)),
                "sha256": _sha(f.data),
            }
        )
    return {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": graph}


def build_bundle(
    meta: Mapping[str, Any],
    outputs: Sequence[BundleFile],
    disclosure_report: Mapping[str, Any],
    review_record: Mapping[str, Any],
    signer: CheckpointSigner,
) -> bytes:
    """The signed zip, byte-identical for the same inputs (fixed order and timestamps)."""
    extra = [
        BundleFile("disclosure-report.json", _pretty(disclosure_report), "application/json"),
        BundleFile("review-record.json", _pretty(review_record), "application/json"),
    ]
    crate = BundleFile(
        "ro-crate-metadata.json", _pretty(ro_crate(meta, outputs, extra)), "application/ld+json"
    )
    contents = [*outputs, *extra, crate]
    manifest = {
        "format": FORMAT,
        "request": meta["request"],
        "project": meta["project"],
        "author": meta["author"],
        "released_at": meta["released_at"],
        "files": [
            {"path": f.path, "sha256": _sha(f.data), "size": len(f.data)}
            for f in sorted(contents, key=lambda f: f.path)
        ],
        "signing_key": {
            "algorithm": "Ed25519",
            "public_key": signer.public_hex,
            "key_id": signer.key_id,
        },
    }
    manifest_bytes = canonical_json(manifest).encode()
    signature = signer.sign(manifest_bytes).encode()
    stamp = _zip_time(str(meta["released_at"]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in [
            (MANIFEST, manifest_bytes),
            (SIGNATURE, signature),
            *sorted(((f.path, f.data) for f in contents), key=lambda pair: pair[0]),
        ]:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _pretty(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _zip_time(iso: str) -> tuple[int, int, int, int, int, int]:
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", iso)
    if not match:
        return (1980, 1, 1, 0, 0, 0)
    y, mo, d, h, mi, s = (int(x) for x in match.groups())
    return (max(y, 1980), mo, d, h, mi, s - s % 2)


@dataclass
class Verification:
    """The outcome of checking a bundle; ``problems`` is empty when it is intact and signed."""

    path: str
    request: str | None = None
    project: str | None = None
    author: str | None = None
    released_at: str | None = None
    key_id: str | None = None
    public_key: str | None = None
    trusted_key: bool | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "request": self.request,
            "project": self.project,
            "author": self.author,
            "released_at": self.released_at,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "trusted_key": self.trusted_key,
            "files": self.files,
            "problems": self.problems,
        }


def verify_bundle(path: Path, trusted_public_key: str | None = None) -> Verification:
    """Check a bundle offline: every file listed and unaltered, nothing extra, signature valid.

    The signature is checked with the key named in the manifest; pass the platform's public key
    (``spe audit public-key`` prints it) as ``trusted_public_key`` to also prove who signed it.
    """
    result = Verification(path=str(path))
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BundleError(f"There is no file {path}.") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path} is not a release bundle (not a readable zip: {exc}).") from None
    with archive:
        names = [i.filename for i in archive.infolist()]
        if MANIFEST not in names or SIGNATURE not in names:
            raise BundleError(f"{path} is not a release bundle: it has no signed manifest.")
        if len(set(names)) != len(names):
            result.problems.append("The archive lists a file name twice.")
        contents = _read_all(archive, result)
    manifest_bytes = contents.pop(MANIFEST, b"")
    signature = contents.pop(SIGNATURE, b"").decode("ascii", "replace").strip()
    try:
        manifest = json.loads(manifest_bytes)
        files = manifest["files"]
        key = manifest["signing_key"]["public_key"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{path} has a damaged manifest; it cannot be trusted.") from None
    for name in ("request", "project", "author", "released_at"):
        setattr(result, name, manifest.get(name))
    result.public_key = key
    try:
        result.key_id = key_id_of(bytes.fromhex(key))
    except (ValueError, TypeError):
        result.problems.append("The manifest's signing key is not a hex Ed25519 key.")
    if canonical_json(manifest).encode() != manifest_bytes:
        result.problems.append("The manifest is not in its canonical form; it was edited.")
    if not verify_signature(str(key), manifest_bytes, signature):
        result.problems.append("The manifest's signature does not verify: the bundle was altered.")
    if trusted_public_key is not None:
        result.trusted_key = trusted_public_key.strip().lower() == str(key).lower()
        if not result.trusted_key:
            result.problems.append(
                "The bundle is signed with a key other than the platform key you gave; it was "
                "not released by that platform."
            )
    listed = set()
    for entry in files:
        name, want = entry.get("path"), entry.get("sha256")
        listed.add(name)
        data = contents.get(name)
        if data is None:
            result.problems.append(f"{name} is listed in the manifest but missing.")
            continue
        got = _sha(data)
        ok = got == want and len(data) == entry.get("size")
        result.files.append({"path": name, "sha256": got, "size": len(data), "ok": ok})
        if not ok:
            result.problems.append(f"{name} does not match its SHA-256 in the manifest.")
    for name in sorted(set(contents) - listed):
        result.problems.append(f"{name} is in the bundle but not in the signed manifest.")
    return result


def _read_all(archive: zipfile.ZipFile, result: Verification) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if name not in (MANIFEST, SIGNATURE) and not _ENTRY.match(name):
            result.problems.append(f"{name!r} is not a name a bundle uses; refused.")
            continue
        chunks = []
        try:
            with archive.open(info) as stream:
                while block := stream.read(1 << 20):
                    total += len(block)
                    if total > _MAX_EXPANDED:
                        raise BundleError(
                            f"{result.path} expands beyond 4 GiB; it is not a release bundle."
                        )
                    chunks.append(block)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            result.problems.append(f"{name} cannot be read ({exc}).")
            continue
        contents[name] = b"".join(chunks)
    return contents
