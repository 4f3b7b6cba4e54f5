"""What every route needs: the caller (from a bearer token) and a transaction, and the mapping
from SPE's error families to HTTP answers whose body is the sentence a person can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from spe.errors import NotFound, PermissionDenied, SPEError


class Unauthenticated(SPEError):
    exit_code = 3


def _token(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthenticated(
            "Send your SPE API token as 'Authorization: Bearer TOKEN' (`spe token create`)."
        )
    return authorization[7:].strip()


def caller(authorization: Annotated[str | None, Header()] = None) -> str:
    """The username a bearer token belongs to (checked in a read-only transaction)."""
    from spe.accounts.tokens import authenticate
    from spe.db import readonly

    token = _token(authorization)
    with readonly() as session:
        try:
            return authenticate(session, token).username
        except PermissionDenied as exc:
            raise Unauthenticated(exc.message) from None


CallerDep = Annotated[str, Depends(caller)]


@contextmanager
def acting(username: str) -> Iterator[tuple[Session, Any]]:
    """One writing transaction as the caller; it commits when the block ends without error."""
    from spe.accounts.service import get_user
    from spe.db import transaction

    with transaction() as session:
        yield session, get_user(session, username)


@contextmanager
def reading(username: str) -> Iterator[tuple[Session, Any]]:
    """One read-only transaction as the caller (on SQLite it does not take the write lock)."""
    from spe.accounts.service import get_user
    from spe.db import readonly

    with readonly() as session:
        yield session, get_user(session, username)


def status_of(error: SPEError) -> int:
    from spe.exports.errors import BundleError, ExportInputError, ExportStateError
    from spe.tasks import BrokerError

    for kind, code in (
        (Unauthenticated, 401),
        (PermissionDenied, 403),
        (NotFound, 404),
        (ExportStateError, 409),
        (ExportInputError, 422),
        (BundleError, 422),
        (BrokerError, 503),
    ):
        if isinstance(error, kind):
            return code
    return 400


async def spe_error_handler(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SPEError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
    return JSONResponse(
        {"detail": error.message, "error": type(error).__name__},
        status_code=status_of(error),
        headers=headers,
    )
