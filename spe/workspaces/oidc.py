"""OpenID Connect login for production (SPE_HUB_AUTHENTICATOR=oidc): oauthenticator's
GenericOAuthenticator configured from SPE's settings, and the mapping from a provider's claims
to an SPE account and institution (a pure function); unknown people are refused or enrolled;
where a setting says so, a login whose provider does not show MFA (amr/acr) is refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oauthenticator.generic import GenericOAuthenticator
from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado import web

from spe.audit import record, state_change
from spe.config import Settings, get_settings
from spe.errors import SPEError

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")

# Documented examples (README, helm/spe/values-production.yaml); endpoints as the providers
# publish them in their /.well-known/openid-configuration.
FEIDE = {
    "SPE_OIDC_ISSUER": "https://auth.dataporten.no",
    "SPE_OIDC_AUTHORIZE_URL": "https://auth.dataporten.no/oauth/authorization",
    "SPE_OIDC_TOKEN_URL": "https://auth.dataporten.no/oauth/token",
    "SPE_OIDC_USERINFO_URL": "https://auth.dataporten.no/openid/userinfo",
    "SPE_OIDC_SCOPES": "openid profile email userid-feide",
    "SPE_OIDC_USERNAME_CLAIM": "https://n.feide.no/claims/eduPersonPrincipalName",
    # "@claim": the realm (after '@') of that claim's value names the institution.
    "SPE_OIDC_INSTITUTION_CLAIM": "@https://n.feide.no/claims/eduPersonPrincipalName",
    "SPE_OIDC_INSTITUTIONS": "uio.no=University of Oslo,ntnu.no=NTNU",
    "SPE_OIDC_UNKNOWN_USERS": "enrol",
}
ID_PORTEN = {
    "SPE_OIDC_ISSUER": "https://idporten.no",
    "SPE_OIDC_AUTHORIZE_URL": "https://login.idporten.no/authorize",
    "SPE_OIDC_TOKEN_URL": "https://idporten.no/token",
    "SPE_OIDC_USERINFO_URL": "https://idporten.no/userinfo",
    "SPE_OIDC_SCOPES": "openid profile",
    # ID-porten's sub is a pseudonym per client: never the national identity number (pid).
    "SPE_OIDC_USERNAME_CLAIM": "sub",
    "SPE_OIDC_INSTITUTION_CLAIM": "",
    "SPE_OIDC_UNKNOWN_USERS": "refuse",
}


class OIDCError(SPEError):
    """A login through the identity provider is refused; the message says why and what to do."""

    exit_code = 3


@dataclass(frozen=True)
class OIDCIdentity:
    """Who the provider says logged in, in SPE's terms."""

    username: str
    institution: str | None  # an SPE organisation name, or None when not mapped/asked
    full_name: str
    email: str


def parse_institutions(text: str) -> dict[str, str]:
    """'uio.no=University of Oslo,ntnu.no=NTNU' → {claim value: SPE organisation}."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise OIDCError(
                f"SPE_OIDC_INSTITUTIONS has {item!r}; write CLAIM_VALUE=ORGANISATION pairs "
                "separated by commas."
            )
        pairs[key.strip().lower()] = value.strip()
    return pairs


def spe_username(value: str) -> str:
    """An SPE username for a claim value: readable when it can be (dave@uio.no → dave.uio.no),
    else 'u-' and a hash of it (stable, and never the value itself)."""
    readable = value.strip().lower().replace("@", ".")
    if _USERNAME.match(readable):
        return readable
    return "u-" + hashlib.sha256(value.encode()).hexdigest()[:24]


def _claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value not in (None, "") else None


def map_claims(
    claims: Mapping[str, Any],
    *,
    username_claim: str,
    institution_claim: str = "",
    institutions: Mapping[str, str] | None = None,
) -> OIDCIdentity:
    """The SPE identity for a provider's claims (pure): raises OIDCError when a needed claim is
    missing or names an institution SPE does not know."""
    raw = _claim(claims, username_claim)
    if raw is None:
        raise OIDCError(
            f"The identity provider did not send the claim {username_claim!r}; ask the operator "
            "to request the scope that carries it."
        )
    institution = None
    if institution_claim:
        realm = institution_claim.startswith("@")
        source = _claim(claims, institution_claim.removeprefix("@"))
        if source is not None and realm:
            source = source.rpartition("@")[2] if "@" in source else None
        if source is None:
            raise OIDCError(
                "The identity provider did not say which institution you belong to; log in with "
                "your institution's account."
            )
        institution = (institutions or {}).get(source.lower())
        if institution is None:
            raise OIDCError(
                f"Your institution ({source}) has no agreement with this platform; ask your "
                "institution's SPE administrator."
            )
    return OIDCIdentity(
        username=spe_username(raw),
        institution=institution,
        full_name=_claim(claims, "name") or "",
        email=_claim(claims, "email") or "",
    )


@state_change("user.create")
def enrol_from_oidc(session: Session, identity: OIDCIdentity) -> Any:
    """Create a researcher account (no password: they log in through the provider) at the
    institution the provider named; used when SPE_OIDC_UNKNOWN_USERS=enrol."""
    from spe.accounts.models import OrgKind, Role, RoleGrant
    from spe.accounts.service import _new_user, get_organisation

    if identity.institution is None:
        raise OIDCError(
            "You have no SPE account, and the provider did not name your institution, so none "
            "can be made; ask your institution's SPE administrator to enrol you."
        )
    organisation = get_organisation(session, identity.institution)
    if organisation.kind != OrgKind.RESEARCH_INSTITUTION:
        raise OIDCError(f"{organisation.name} is not a research institution on this platform.")
    user = _new_user(
        session, identity.username, organisation, identity.full_name, identity.email, None
    )
    session.add(
        RoleGrant(
            user_id=user.id,
            role=Role.RESEARCHER,
            organisation_id=organisation.id,
            granted_by="system:oidc",
        )
    )
    session.flush()
    session.refresh(user, ["roles"])
    record(
        session,
        "system:oidc",
        "user.create",
        f"user:{user.username}",
        {"organisation": organisation.name, "source": "oidc"},
    )
    record(
        session,
        "system:oidc",
        "role.grant",
        f"user:{user.username}",
        {"role": Role.RESEARCHER.value, "organisation": organisation.name},
    )
    return user


NO_MFA = (
    "Your identity provider did not confirm a login with two factors, which this platform "
    "requires; log in again choosing a method with a code, an app or a security key (or ask "
    "your institution to turn two-factor login on for your account)."
)


def _values(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {str(v) for v in value}
    return set()


def id_token_claims(id_token: str | None) -> dict[str, Any]:
    """The claims of an ID token received straight from the token endpoint over TLS (OIDC Core
    3.1.3.7 lets the client rely on TLS there instead of the signature); {} if unreadable."""
    import base64
    import json

    if not id_token or id_token.count(".") != 2:
        return {}
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def shows_mfa(claims: Mapping[str, Any], amr: str, acr: str) -> bool:
    """Do the provider's claims show a login with more than one factor (pure)? ``amr`` and
    ``acr`` are the comma-separated values that count (SPE_OIDC_MFA_AMR, SPE_OIDC_MFA_ACR)."""
    wanted_amr = {v.strip() for v in amr.split(",") if v.strip()}
    wanted_acr = {v.strip() for v in acr.split(",") if v.strip()}
    return bool(_values(claims.get("amr")) & wanted_amr) or bool(
        _values(claims.get("acr")) & wanted_acr
    )


def check_mfa(auth_state: Mapping[str, Any], user_info: Mapping[str, Any], username: str) -> None:
    """Refuse (OIDCError, and a refusal in the audit log) a login that does not show MFA, when
    SPE_OIDC_REQUIRE_MFA is on. The claims are the ID token's, then the userinfo's."""
    settings = get_settings()
    if not settings.oidc_require_mfa:
        return
    claims = {**user_info, **id_token_claims(auth_state.get("id_token"))}
    if shows_mfa(claims, settings.oidc_mfa_amr, settings.oidc_mfa_acr):
        return
    from spe.audit import record_refusal

    record_refusal(
        username,
        "user.login",
        f"user:{username}",
        NO_MFA,
        source="oidc",
        amr=",".join(sorted(_values(claims.get("amr")))) or "-",
        acr=",".join(sorted(_values(claims.get("acr")))) or "-",
    )
    raise OIDCError(NO_MFA)


def admit_login(identity: OIDCIdentity, unknown_users: str) -> str:
    """The SPE username to log in, after refusing an inactive or (per setting) unknown account,
    or one the provider places at another institution; the login is audited. Blocking."""
    from spe.accounts.models import User
    from spe.accounts.service import record_login
    from spe.db import transaction

    with transaction() as session:
        user = session.scalar(select(User).where(User.username == identity.username))
        if user is None:
            if unknown_users != "enrol":
                raise OIDCError(
                    f"There is no SPE account {identity.username!r}; ask your institution's SPE "
                    "administrator to enrol you."
                )
            user = enrol_from_oidc(session, identity)
        if not user.active:
            raise OIDCError(
                f"The SPE account {user.username!r} is deactivated; ask your institution's SPE "
                "administrator."
            )
        if (
            identity.institution is not None
            and user.organisation is not None
            and user.organisation.name != identity.institution
        ):
            raise OIDCError(
                f"The SPE account {user.username!r} belongs to {user.organisation.name}, but the "
                f"provider says you log in from {identity.institution}."
            )
        record_login(session, user, True, source="oidc")
        return user.username


def oidc_config(settings: Settings) -> dict[str, Any]:
    """GenericOAuthenticator's traits from SPE's settings (pure); OIDCError names what is
    missing."""
    needed = {
        "SPE_OIDC_AUTHORIZE_URL": settings.oidc_authorize_url,
        "SPE_OIDC_TOKEN_URL": settings.oidc_token_url,
        "SPE_OIDC_USERINFO_URL": settings.oidc_userinfo_url,
        "SPE_OIDC_CLIENT_ID": settings.oidc_client_id,
        "SPE_OIDC_CLIENT_SECRET": (
            settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else ""
        ),
        "SPE_OIDC_CALLBACK_URL": settings.oidc_callback_url,
    }
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise OIDCError(
            f"OIDC login needs {', '.join(missing)}; set them (the chart's oidc values) or use "
            "SPE_HUB_AUTHENTICATOR=spe."
        )
    parse_institutions(settings.oidc_institutions)  # fail now, not at the first login
    return {
        "authorize_url": settings.oidc_authorize_url,
        "token_url": settings.oidc_token_url,
        "userdata_url": settings.oidc_userinfo_url,
        "client_id": settings.oidc_client_id,
        "client_secret": needed["SPE_OIDC_CLIENT_SECRET"],
        "oauth_callback_url": settings.oidc_callback_url,
        "scope": settings.oidc_scopes.split(),
        "username_claim": settings.oidc_username_claim,
        "login_service": settings.oidc_issuer or "your institution",
        # Who may log in is SPE's decision (admit_login), made in update_auth_model.
        "allow_all": True,
        "enable_auth_state": False,
    }


class SPEOIDCAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator whose users are SPE accounts, mapped from the provider's claims."""

    def user_info_to_username(self, user_info: dict[str, Any]) -> str:
        return self._identity(user_info).username

    def _identity(self, user_info: Mapping[str, Any]) -> OIDCIdentity:
        settings = get_settings()
        try:
            return map_claims(
                user_info,
                username_claim=settings.oidc_username_claim,
                institution_claim=settings.oidc_institution_claim,
                institutions=parse_institutions(settings.oidc_institutions),
            )
        except OIDCError as exc:
            raise web.HTTPError(403, exc.message) from None

    async def update_auth_model(self, auth_model: dict[str, Any]) -> dict[str, Any]:
        import asyncio

        auth_state = auth_model.get("auth_state") or {}
        user_info = auth_state.get(self.user_auth_state_key) or {}
        identity = self._identity(user_info)
        try:
            await asyncio.to_thread(check_mfa, auth_state, user_info, identity.username)
            auth_model["name"] = await asyncio.to_thread(
                admit_login, identity, get_settings().oidc_unknown_users
            )
        except OIDCError as exc:
            raise web.HTTPError(403, exc.message) from None
        auth_model["admin"] = False
        return auth_model
