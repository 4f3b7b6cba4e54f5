"""The FastAPI application: routers for researchers and reviewers, errors as sentences."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from spe.api import researcher, reviewer
from spe.api.deps import spe_error_handler
from spe.errors import SPEError

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
    app.include_router(web_router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get(f"{API}/health", tags=["platform"])
    def health() -> dict[str, str]:
        """Liveness: the API answers (it does not touch the database)."""
        return {"status": "ok"}

    return app
