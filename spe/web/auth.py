"""Who is looking at a page: a login to the pages (started through the hub's OAuth, one login
for hub and pages, then kept as an SPE session), or an SPE API token; and the form token, bound
to the session, that keeps other sites from posting our forms.

The OAuth state and PKCE verifier travel in a short-lived cookie, never in process memory, so
any replica of the pages can finish a login another one started.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response

from spe.errors import SPEError

log = logging.getLogger("spe.web")

SESSION_COOKIE = "spe-session"
STATE_COOKIE = "spe-oauth-state"
CSRF_COOKIE = "spe-csrf"
HUB_SESSION_COOKIE = "jupyterhub-session-id"
CSRF_FIELD = "csrf"
STATE_MAX_AGE = 600
SESSION_MAX_AGE = 86400  # a working day, as the hub's own cookie
_FORM_KEY = b"spe-form-token"


class LoginRequired(SPEError):
    """The page needs a logged-in person; the pages answer by sending the browser to log in."""

    exit_code = 3


class LoginFailed(SPEError):
    """The hub's answer to a login did not match the login this browser started."""


class FormRefused(SPEError):
    """A form came without this browser's form token (another site, or a stale page)."""


class PasswordRequired(SPEError):
    """The person logged in with a one-time password: only the page that sets one is open."""

    exit_code = 3


class MfaRequired(SPEError):
    """The person's role needs MFA and they have none yet: only the enrolment page is open."""

    exit_code = 3


@functools.cache
def hub_oauth() -> Any | None:
    """JupyterHub's OAuth client for this service, or None when not running under the hub.

    The hub hands a managed service its client id, token and callback in JUPYTERHUB_*
    variables; HubOAuth reads them itself.
    """
    from jupyterhub.services.auth import HubOAuth

    try:
        auth = HubOAuth(cache_max_age=60)
        if not auth.oauth_client_id or not auth.api_token:  # empty outside the hub
            return None
    except Exception:
        return None
    return auth


def cookie_path(prefix: str) -> str:
    return prefix.rstrip("/") + "/"


def _secure(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", request.url.scheme) == "https"


def start_login(request: Request, prefix: str, next_url: str) -> Response:
    """Send the browser to the hub's authorize page, remembering where it was going."""
    from fastapi.responses import RedirectResponse

    auth = hub_oauth()
    if auth is None:
        raise LoginRequired(
            "These pages log you in through the platform's hub, which is not running here; "
            "start the platform with `spe up` (or `make demo`), or send an SPE API token as "
            "'Authorization: Bearer TOKEN'."
        )
    state = secrets.token_urlsafe(24)
    verifier, challenge, method = auth.generate_pkce_code_challenge()
    params = {
        "client_id": auth.oauth_client_id,
        "redirect_uri": auth.oauth_redirect_uri,
        "response_type": "code",
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": method,
    }
    response = RedirectResponse(f"{auth.oauth_authorization_url}?{urlencode(params)}", 302)
    # Only back to a page of ours, and never to the login's own steps (that would loop).
    own_steps = (f"{prefix}/login", f"{prefix}/oauth_callback")
    safe_next = (
        next_url
        if next_url.startswith(cookie_path(prefix)) and not next_url.startswith(own_steps)
        else cookie_path(prefix)
    )
    response.set_cookie(
        STATE_COOKIE,
        f"{state} {verifier} {safe_next}",
        max_age=STATE_MAX_AGE,
        path=cookie_path(prefix),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


async def finish_login(request: Request, prefix: str, code: str, state: str) -> Response:
    """The hub sent the browser back with a code: swap it for a token kept in a cookie."""
    from fastapi.responses import RedirectResponse

    auth = hub_oauth()
    saved = (request.cookies.get(STATE_COOKIE) or "").split(" ", 2)
    if auth is None or len(saved) != 3 or not hmac.compare_digest(saved[0], state):
        raise LoginFailed(
            "The login did not finish (it took too long, or was started elsewhere); log in again."
        )
    _state, verifier, next_url = saved
    token = await auth.token_for_code(code, code_verifier=verifier, sync=False)
    model = await auth.user_for_token(token, sync=False)
    if not model:
        raise LoginFailed("The hub did not say who logged in; log in again.")
    source = f"pages from {request.client.host if request.client else 'unknown'}"
    session_token = start_pages_session(str(model["name"]), source)
    if session_token is None:
        # The hub's login predates a revocation of this account's sessions: log in afresh.
        response = RedirectResponse("/hub/logout", 302)
        response.delete_cookie(STATE_COOKIE, path=cookie_path(prefix))
        return response
    response = RedirectResponse(next_url, 302)
    response.delete_cookie(STATE_COOKIE, path=cookie_path(prefix))
    # A form token planted before the login does not survive it (the new one is derived from
    # the new session).
    response.delete_cookie(CSRF_COOKIE, path=cookie_path(prefix))
    set_session_cookie(request, response, prefix, session_token)
    return response


def set_session_cookie(request: Request, response: Response, prefix: str, token: str) -> None:
    from spe.config import get_settings

    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(get_settings().session_hours * 3600),
        path=cookie_path(prefix),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def start_pages_session(username: str, source: str) -> str | None:
    """A pages session for ``username`` whom the hub vouched for (blocking); None when the
    hub's login is older than the last revocation of the account's sessions."""
    from spe.accounts.service import get_user
    from spe.accounts.sessions import start_session
    from spe.db import transaction

    with transaction() as session:
        user = get_user(session, username)
        revoked, login = user.sessions_revoked_at, user.last_login_at
        if revoked is not None and (login is None or login <= revoked):
            return None
        return start_session(session, user, source)


async def username_from_request(request: Request) -> str | None:
    """The SPE username of the caller: an API token first, else the login cookie; or None."""
    header = request.headers.get("authorization")
    if header:
        from spe.api.deps import caller

        return caller(header)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    from spe.accounts.sessions import session_user

    return session_user(token)


def logged_in_at_hub(request: Request) -> bool:
    """The browser holds the hub's session cookie (it may still have expired at the hub)."""
    return HUB_SESSION_COOKIE in request.cookies


def _session_form_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), _FORM_KEY, "sha256").hexdigest()[:43]


def csrf_token(request: Request) -> str:
    """This browser's form token: derived from its login session (so it changes at login and
    is worth nothing without the session cookie); for a visitor, made on first sight and kept
    in a cookie."""
    session_token = request.cookies.get(SESSION_COOKIE)
    if session_token:
        return _session_form_token(session_token)
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if not token:
        token = request.state.new_csrf = secrets.token_urlsafe(24)
    return str(token)


def set_csrf_cookie(request: Request, response: Response, prefix: str) -> None:
    new = getattr(request.state, "new_csrf", None)
    if new and not request.cookies.get(CSRF_COOKIE) and not request.cookies.get(SESSION_COOKIE):
        response.set_cookie(
            CSRF_COOKIE,
            new,
            max_age=SESSION_MAX_AGE,
            path=cookie_path(prefix),
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )


def check_form_token(request: Request, sent: str | None) -> None:
    """Refuse a form post without this browser's token (API-token callers need none)."""
    if request.headers.get("authorization"):
        return  # a bearer token is not sent by browsers on their own, so it cannot be forged
    session_token = request.cookies.get(SESSION_COOKIE)
    cookie = (
        _session_form_token(session_token) if session_token else request.cookies.get(CSRF_COOKIE)
    )
    if not cookie or not sent or not hmac.compare_digest(cookie, sent):
        raise FormRefused(
            "This form was not sent from an SPE page open in this browser (or the page is "
            "stale); reload the page and send it again."
        )
