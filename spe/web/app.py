"""The pages' plumbing: the router under the hub's service prefix, templates, who is looking,
forms, flash messages, and refusals rendered as the sentence they carry.

Route handlers live in ``spe.web.pages``; they call capability functions only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from spe.accounts.models import Role, User
from spe.errors import SPEError
from spe.web import auth
from spe.web.render import number

# JupyterHub routes a managed service called "spe" at /services/spe/ (one login for all).
SERVICE_NAME = "spe"
PREFIX = f"/services/{SERVICE_NAME}"
FLASH_COOKIE = "spe-flash"
HERE = Path(__file__).resolve().parent

web_router = APIRouter(prefix=PREFIX, include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def url(path: str = "/") -> str:
    """An absolute path under the pages' prefix."""
    return PREFIX + (path if path.startswith("/") else "/" + path)


def _when(value: Any) -> str:
    """A timestamp as people read it: UTC, to the minute."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


templates.env.filters.update(
    when=_when, number=number, size=_size, tojson_compact=lambda v: json.dumps(v, default=str)
)
templates.env.globals.update(url=url, quote=lambda s: quote(str(s), safe=""))


@dataclass
class Viewer:
    """The person looking at a page, as the pages need them (never a password or key)."""

    username: str
    full_name: str
    organisation: str | None
    roles: set[str] = field(default_factory=set)

    @property
    def is_researcher(self) -> bool:
        return Role.RESEARCHER.value in self.roles

    @property
    def is_holder(self) -> bool:
        return Role.HOLDER_REVIEWER.value in self.roles

    @property
    def is_auditor(self) -> bool:
        return Role.AUDITOR.value in self.roles

    @property
    def is_admin(self) -> bool:
        return Role.INSTITUTION_ADMIN.value in self.roles

    @property
    def is_operator(self) -> bool:
        return Role.OPERATOR.value in self.roles

    def nav(self) -> list[tuple[str, str]]:
        items = [("Catalogue", url("/catalogue"))]
        if self.is_researcher:
            items += [("My projects", url("/projects")), ("My exports", url("/exports"))]
        if self.is_holder:
            items += [
                ("Review queue", url("/review")),
                ("Datasets", url("/holder/datasets")),
                ("Projects", url("/holder/projects")),
                ("Who used my data", url("/holder/access")),
            ]
        if self.is_auditor:
            items.append(("Audit log", url("/audit")))
        if self.is_admin:
            items.append(("Researchers", url("/admin")))
        return items


def viewer_of(user: User) -> Viewer:
    return Viewer(
        username=user.username,
        full_name=user.full_name,
        organisation=user.organisation.name if user.organisation else None,
        roles={g.role.value for g in user.roles},
    )


# Whether the caller of this request came with the pages' login cookie (not an API token):
# such a login of an account that must have MFA and has none opens only the enrolment page.
_BY_LOGIN: ContextVar[bool] = ContextVar("spe_pages_by_login", default=False)


async def who(request: Request) -> str | None:
    """The caller's username (API token or hub login), or None for a visitor."""
    _BY_LOGIN.set(False)
    try:
        name = await auth.username_from_request(request)
    except SPEError:
        return None
    _BY_LOGIN.set(name is not None and not request.headers.get("authorization"))
    return name


@contextmanager
def reading_as(username: str | None) -> Iterator[tuple[Session, User | None]]:
    """A read-only transaction with the viewer's account (None for visitors)."""
    from spe.accounts.service import get_user
    from spe.db import readonly

    with readonly() as session:
        user = get_user(session, username) if username else None
        if user is not None and not user.active:
            user = None  # a deactivated account sees what a visitor sees
        _password_set(user)
        _mfa_set(session, user)
        yield session, user


def _password_set(user: User | None) -> None:
    """A one-time login opens only the page that sets a password."""
    if user is not None and user.must_change_password:
        raise auth.PasswordRequired(
            "You logged in with a one-time password; set your own password first."
        )


def _mfa_set(session: Session, user: User | None) -> None:
    """A login of an account that must have MFA and has none opens only the enrolment page."""
    from spe.accounts.mfa import must_enrol

    if user is not None and _BY_LOGIN.get() and must_enrol(session, user):
        raise auth.MfaRequired(
            "Your role needs two-step login: set it up first (a code from an authenticator app "
            "at every login)."
        )


@contextmanager
def signed_in(username: str | None) -> Iterator[tuple[Session, User, Viewer]]:
    """A read-only transaction for a page that needs a logged-in person (else: log in)."""
    with reading_as(username) as (session, user):
        user = require(user)
        yield session, user, viewer_of(user)


@contextmanager
def acting_as(username: str) -> Iterator[tuple[Session, User]]:
    """One writing transaction as the viewer; commits when the block ends without error."""
    from spe.accounts.service import get_user
    from spe.db import transaction

    with transaction() as session:
        user = get_user(session, username)
        _password_set(user)
        _mfa_set(session, user)
        yield session, user


# Pages load only their own script and styles, are never framed (clickjacking of the review
# forms), post only to themselves, and are not kept in caches (they show personal data).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a page with the frame every page shares (navigation, flash message, form token)."""
    flash = unquote(request.cookies.get(FLASH_COOKIE) or "") or None
    response = templates.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "flash": flash,
            "csrf": auth.csrf_token(request),
            "csrf_field": auth.CSRF_FIELD,
            "prefix": PREFIX,
            **context,
        },
        status_code=status_code,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=auth.cookie_path(PREFIX))
    auth.set_csrf_cookie(request, response, PREFIX)
    response.headers.update(PAGE_HEADERS)
    return response


def done(to: str, message: str) -> RedirectResponse:
    """After a form: back to a page, with one sentence saying what happened."""
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(message),
        max_age=60,
        path=auth.cookie_path(PREFIX),
        httponly=True,
        samesite="strict",
    )
    return response


def refusal_page(request: Request, error: SPEError, viewer: Viewer | None) -> Response:
    """A refusal as a page: the sentence, with the HTTP status the API would answer."""
    from spe.api.deps import status_of

    if (
        isinstance(error, auth.LoginRequired)
        and request.method == "GET"
        and viewer is None
        and auth.hub_oauth() is not None
    ):
        return RedirectResponse(url(f"/login?next={quote(str(request.url.path))}"), 302)
    if isinstance(error, auth.PasswordRequired) and request.method == "GET":
        return RedirectResponse(url("/password"), 303)
    if isinstance(error, auth.MfaRequired) and request.method == "GET":
        return RedirectResponse(url("/mfa"), 303)
    if isinstance(error, auth.LoginRequired | auth.LoginFailed):
        code = 401
    elif isinstance(error, auth.FormRefused | auth.PasswordRequired | auth.MfaRequired):
        code = 403
    else:
        code = status_of(error)
    return page(request, "error.html", viewer, status_code=code, message=error.message)


async def page_error(request: Request, error: Exception) -> Response:
    """Any refusal raised by a page's handler, shown as a page (or a login redirect)."""
    from fastapi.exceptions import RequestValidationError

    viewer = None
    name = await who(request)
    if name:
        try:
            with reading_as(name) as (_session, user):
                viewer = viewer_of(user) if user else None
        except SPEError:
            viewer = None  # e.g. a one-time login: the frame shows no navigation
    if isinstance(error, RequestValidationError):
        missing = sorted({str(e["loc"][-1]) for e in error.errors()})
        error = SPEError(
            f"The form is missing {', '.join(missing)}; fill in every field and send it again."
        )
    assert isinstance(error, SPEError)
    return refusal_page(request, error, viewer)


def require(user: User | None) -> User:
    if user is None:
        raise auth.LoginRequired("Log in to see this page.")
    return user
