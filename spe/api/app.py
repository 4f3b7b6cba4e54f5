"""The FastAPI application: routers for researchers, reviewers and accounts, errors as
sentences, and every refusal of a known caller written to the audit log (spe.audit.refusals).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from spe.api import account, projects, researcher, reviewer
from spe.api.deps import Unauthenticated, spe_error_handler
from spe.errors import PermissionDenied, SPEError

API = "/api/v1"


def create_app() -> FastAPI:
    app = FastAPI(
        title="SPE API",
        version="1",
        description=(
            "The secure processing environment's API: researchers file export requests and "
            "download signed release bundles; data holders' reviewers check, vote, comment and "
            "decide. Authenticate with 'Authorization: Bearer TOKEN' (`spe token create`). Every "
            "refusal's `detail` is a sentence saying why and what to do."
        ),
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    from spe.web import pages  # noqa: F401 - registers the pages on web_router
    from spe.web.app import HERE, PREFIX, web_router

    async def on_error(request: Request, error: Exception) -> Any:
        """Refusals: a page under the pages' prefix, JSON everywhere else."""
        if isinstance(error, SPEError):
            await note_refusal(request, error)
        if request.url.path.startswith(PREFIX):
            from spe.web.app import page_error

            return await page_error(request, error)
        if isinstance(error, RequestValidationError):
            return await request_validation_exception_handler(request, error)
        return await spe_error_handler(request, error)

    app.add_exception_handler(SPEError, on_error)
    app.add_exception_handler(RequestValidationError, on_error)
    app.include_router(researcher.router, prefix=API)
    app.include_router(reviewer.router, prefix=API)
    app.include_router(account.router, prefix=API)
    app.include_router(projects.router, prefix=API)
    app.include_router(web_router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get(f"{API}/health", tags=["platform"])
    def health() -> dict[str, str]:
        """Liveness: the API answers (it does not touch the database)."""
        return {"status": "ok"}

    return app


_READING = frozenset({"GET", "HEAD", "OPTIONS"})


async def note_refusal(request: Request, error: SPEError) -> None:
    """Write a refusal of a known caller to the audit log: every refused change (a request
    that is not a read), and every read refused by a permission rule. The refused transaction
    has rolled back by now; this is a transaction of its own."""
    from spe.audit.refusals import record_refusal_of
    from spe.web.app import who
    from spe.web.auth import LoginFailed, LoginRequired

    if isinstance(error, Unauthenticated | LoginRequired | LoginFailed):
        return  # nobody to name; failed logins are recorded by the login itself
    if request.method in _READING and not isinstance(error, PermissionDenied):
        return
    actor = await who(request)
    if actor is None:
        return
    # The route as written (ids as {names}), so that a flood over many ids is one reason.
    template = request.url.path
    for name, value in request.path_params.items():
        template = template.replace(f"/{value}", f"/{{{name}}}", 1)
    record_refusal_of(error, actor, f"{request.method} {template}", target=request.url.path)
