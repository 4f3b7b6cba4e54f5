"""OIDC login: the mapping from a provider's claims to an SPE identity (a pure function, with
Feide's and ID-porten's claim shapes) and GenericOAuthenticator's configuration from settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spe.config import Settings, load_settings
from spe.workspaces.oidc import (
    FEIDE,
    ID_PORTEN,
    OIDCError,
    SPEOIDCAuthenticator,
    map_claims,
    oidc_config,
    parse_institutions,
    spe_username,
)

PRINCIPAL = "https://n.feide.no/claims/eduPersonPrincipalName"
FEIDE_MAP = {
    "username_claim": PRINCIPAL,
    "institution_claim": "@" + PRINCIPAL,
    "institutions": parse_institutions("uio.no=University of Oslo, ntnu.no=NTNU"),
}


def test_a_feide_login_maps_to_a_readable_username_and_the_realms_institution() -> None:
    claims = {PRINCIPAL: "Dave@UiO.no", "name": "Dave D", "email": "dave@uio.no", "sub": "x"}
    identity = map_claims(claims, **FEIDE_MAP)
    assert identity.username == "dave.uio.no"
    assert identity.institution == "University of Oslo"
    assert (identity.full_name, identity.email) == ("Dave D", "dave@uio.no")


def test_an_institution_without_an_agreement_is_refused_with_a_reason() -> None:
    with pytest.raises(OIDCError, match=r"Your institution \(uib.no\) has no agreement"):
        map_claims({PRINCIPAL: "eve@uib.no"}, **FEIDE_MAP)


def test_a_missing_claim_is_refused_with_a_reason() -> None:
    with pytest.raises(OIDCError, match="did not send the claim"):
        map_claims({"sub": "x"}, **FEIDE_MAP)
    with pytest.raises(OIDCError, match="which institution"):
        map_claims({PRINCIPAL: "no-realm"}, **FEIDE_MAP)


def test_an_id_porten_subject_becomes_a_stable_hashed_username_never_the_value() -> None:
    sub = "kH8Z0f9lJ2t-Nq3yWc7u1AbCdEfGhIjKlMnOpQrStUv="
    first = map_claims({"sub": sub, "pid": "01010012345"}, username_claim="sub")
    assert first == map_claims({"sub": sub}, username_claim="sub")
    assert first.username.startswith("u-") and sub.lower() not in first.username
    assert "01010012345" not in repr(first)
    assert first.institution is None


def test_a_list_valued_claim_uses_its_first_value() -> None:
    identity = map_claims({"uid": ["carol", "c2"]}, username_claim="uid")
    assert identity.username == "carol"


@given(st.text(min_size=1, max_size=200))
def test_every_claim_value_maps_to_a_valid_spe_username(value: str) -> None:
    import re

    assert re.match(r"^[a-z][a-z0-9._-]{1,62}$", spe_username(value))


@pytest.mark.parametrize("bad", ["uio.no", "=Org", "uio.no="])
def test_a_malformed_institution_list_is_refused(bad: str) -> None:
    with pytest.raises(OIDCError, match="CLAIM_VALUE=ORGANISATION"):
        parse_institutions(bad)


def _settings(example: dict[str, str], **more: str) -> Settings:
    values = {k.removeprefix("SPE_").lower(): v for k, v in example.items()}
    values.update(more)
    return load_settings(**values)


def test_feide_and_id_porten_examples_configure_the_generic_authenticator() -> None:
    for example in (FEIDE, ID_PORTEN):
        settings = _settings(
            example,
            oidc_client_id="spe",
            oidc_client_secret="s3cret",
            oidc_callback_url="https://spe.example.org/hub/oauth_callback",
        )
        config = oidc_config(settings)
        assert config["client_secret"] == "s3cret"
        assert config["userdata_url"] == example["SPE_OIDC_USERINFO_URL"]
        assert config["username_claim"] == example["SPE_OIDC_USERNAME_CLAIM"]
        assert "openid" in config["scope"]
        for name, value in config.items():  # every key is a trait of the authenticator
            assert SPEOIDCAuthenticator.class_traits().get(name) is not None, (name, value)


def test_missing_oidc_settings_are_named() -> None:
    settings = _settings(FEIDE)
    with pytest.raises(OIDCError, match="SPE_OIDC_CLIENT_ID, SPE_OIDC_CLIENT_SECRET"):
        oidc_config(settings)


def test_the_client_secret_is_masked_in_the_settings() -> None:
    settings = _settings(FEIDE, oidc_client_secret="s3cret")
    shown = {name: value for name, value, _ in settings.describe()}
    assert shown["SPE_OIDC_CLIENT_SECRET"] == "********"
    assert "s3cret" not in repr(settings)
