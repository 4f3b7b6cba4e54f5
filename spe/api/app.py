"""The FastAPI application: routers for researchers and reviewers, errors as sentences."""

from __future__ import annotations

from fastapi import FastAPI

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
    app.add_exception_handler(SPEError, spe_error_handler)
    app.include_router(researcher.router, prefix=API)
    app.include_router(reviewer.router, prefix=API)

    @app.get(f"{API}/health", tags=["platform"])
    def health() -> dict[str, str]:
        """Liveness: the API answers (it does not touch the database)."""
        return {"status": "ok"}

    return app
