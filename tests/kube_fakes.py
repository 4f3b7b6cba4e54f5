"""A fake Kubernetes API for SPE's provisioning tests (no cluster is available here): it keeps
objects by (kind, name), records every call and answers 409 and 404 as the real API does."""

from __future__ import annotations

from typing import Any

from spe.k8s.provision import ConflictOrMissing


class FakeCluster:
    """Namespaced objects by (kind, name); every call is recorded."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self.calls.append(("create", kind, name))
        if (kind, name) in self.objects:
            raise ConflictOrMissing(409)
        self.objects[(kind, name)] = body

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch", kind, name))
        if (kind, name) not in self.objects:
            raise ConflictOrMissing(404)
        self.objects[(kind, name)] = {**self.objects[(kind, name)], **body}

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))
        if self.objects.pop((kind, name), None) is None:
            raise ConflictOrMissing(404)

    def names(self, kind: str, namespace: str, label_selector: str) -> list[str]:
        key, _, value = label_selector.partition("=")
        return sorted(
            name
            for (k, name), body in self.objects.items()
            if k == kind and body["metadata"].get("labels", {}).get(key) == value
        )
