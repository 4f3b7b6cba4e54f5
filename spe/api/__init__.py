"""The SPE API (FastAPI): one router per role, no business rules in the routes.

``create_app()`` builds the application; ``spe api`` serves it. The OpenAPI document is published
at /api/v1/openapi.json.
"""

from spe.api.app import create_app

__all__ = ["create_app"]
