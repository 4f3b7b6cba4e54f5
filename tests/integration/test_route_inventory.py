"""Every route of the application (the API and the pages: one FastAPI app) is either public by
an explicit decision here, about the caller's own account only, a list scoped to the viewer, or
has a refusal cell in the two-tenant matrix (tests/integration/test_tenants.py ROUTES) for a
wrong role or tenant. A new route without any of these fails this test, so a route cannot be
added without deciding who may use it and proving the refusal.

No database is needed: the routes are read from the app objects, the matrix from its table
(the matrix test itself proves each cell against the real application).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from spe.api import create_app
from tests.integration.test_tenants import ACTORS, API, OWN_ACCOUNT, PAGES, ROUTES, SCOPED_LISTS

# Routes anyone may use without a login, each with the reason it is safe.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", f"{API}/health"): "liveness only; touches no data",
    ("GET", f"{API}/openapi.json"): "the published API description",
    ("GET", f"{API}/docs"): "the API description, rendered",
    (
        "GET",
        "/docs/oauth2-redirect",
    ): "part of the rendered API description (FastAPI's default path)",
    ("GET", f"{PAGES}/login"): "starts a login",
    ("GET", f"{PAGES}/oauth_callback"): "finishes a login",
    ("GET", f"{PAGES}/logout"): "ends the caller's own login",
    ("GET", f"{PAGES}/"): "home: the public catalogue, plus the viewer's own cards",
    ("GET", f"{PAGES}/catalogue"): "the public catalogue (DGA Art. 8)",
    ("GET", f"{PAGES}/catalogue/{{dataset}}"): "a public catalogue entry (DGA Art. 8)",
    ("MOUNT", f"{PAGES}/static"): "the pages' own scripts and styles",
}


def _walk(routes: list[Any], prefix: str, found: set[tuple[str, str]]) -> None:
    for route in routes:
        if isinstance(route, Mount):
            found.add(("MOUNT", prefix + route.path))
        elif isinstance(route, APIRoute | Route):
            for method in route.methods or ():
                if method != "HEAD":  # answered with GET
                    found.add((method, prefix + route.path))
        elif hasattr(route, "original_router") and hasattr(route, "include_context"):
            # FastAPI >= 0.165 keeps an included router as one entry (its routes and prefix)
            _walk(route.original_router.routes, prefix + route.include_context.prefix, found)
        else:  # a kind of route this test does not know: decide on it here
            found.add(("UNKNOWN", f"{prefix} {route!r}"[:200]))


def inventory(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path template) the app answers; a mount counts as one route."""
    found: set[tuple[str, str]] = set()
    _walk(list(app.routes), "", found)
    return found


def refused_in_matrix() -> set[tuple[str, str]]:
    """Routes that the matrix asks with at least one relation that must be refused."""
    return {
        (r.method, r.template)
        for r in ROUTES
        if r.refusal is not None and any(who not in r.allowed for who in ACTORS)
    }


def unguarded(app: FastAPI) -> set[tuple[str, str]]:
    decided = set(PUBLIC) | OWN_ACCOUNT | SCOPED_LISTS | refused_in_matrix()
    return inventory(app) - decided


def test_every_route_is_public_by_decision_or_refuses_the_wrong_role_or_tenant():
    missing = unguarded(create_app())
    assert not missing, (
        "Routes without a permission test: add each to ROUTES in test_tenants.py with the "
        f"relations it serves and the refusal sentence, or decide here why it is public: {missing}"
    )


def test_the_decisions_name_only_routes_that_exist():
    """A stale entry (a route renamed or removed) would hide a new one of the same name."""
    routes = inventory(create_app())
    stale = (set(PUBLIC) | OWN_ACCOUNT | SCOPED_LISTS | refused_in_matrix()) - routes
    assert not stale, stale


def test_a_new_route_without_a_permission_test_fails_the_inventory():
    """A scratch route, as someone might add it: it serves files and nobody tested who may."""
    app = create_app()

    @app.get(f"{API}/review/{{request_id}}/everything")
    def everything(request_id: str) -> dict[str, Any]:  # pragma: no cover - never called
        return {}

    @app.post(f"{PAGES}/holder/projects/{{slug}}/members")
    def scratch_page(slug: str) -> dict[str, Any]:  # pragma: no cover - never called
        return {}

    assert unguarded(app) == {
        ("GET", f"{API}/review/{{request_id}}/everything"),
        ("POST", f"{PAGES}/holder/projects/{{slug}}/members"),
    }
