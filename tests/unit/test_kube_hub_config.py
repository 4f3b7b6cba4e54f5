"""The hub's configuration picks the spawner and the login from settings: KubeSpawner for
SPE_WORKSPACE_BACKEND=kubernetes, OIDC for SPE_HUB_AUTHENTICATOR=oidc; every value set on a
class is one of its traits, so a typo cannot be silently ignored by traitlets."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from spe.config import load_settings
from spe.workspaces.hub_config import HubFiles, HubSecrets, hub_config
from spe.workspaces.kube_spawner import SPEKubeSpawner, apply_kube_hub_config, kube_hub_config

OIDC = {
    "hub_authenticator": "oidc",
    "oidc_authorize_url": "https://idp.example/authorize",
    "oidc_token_url": "https://idp.example/token",
    "oidc_userinfo_url": "https://idp.example/userinfo",
    "oidc_client_id": "spe",
    "oidc_client_secret": "s3cret",
    "oidc_callback_url": "https://spe.example/hub/oauth_callback",
}


def _class(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_traits(config: dict[str, dict[str, Any]]) -> None:
    classes = {
        "SPEKubeSpawner": SPEKubeSpawner,
        "SPEOIDCAuthenticator": _class("spe.workspaces.oidc.SPEOIDCAuthenticator"),
        "JupyterHub": _class("jupyterhub.app.JupyterHub"),
        "Authenticator": _class("jupyterhub.auth.Authenticator"),
    }
    for section, values in config.items():
        if section not in classes:
            continue
        traits = classes[section].class_traits()
        assert set(values) <= set(traits), (section, set(values) - set(traits))


@pytest.mark.parametrize("extra", [{}, OIDC])
def test_the_kubernetes_hub_runs_spes_kubespawner_with_the_chosen_login(
    extra: dict[str, Any],
) -> None:
    config = kube_hub_config(load_settings(**extra))
    hub = config["JupyterHub"]
    assert _class(hub["spawner_class"]) is SPEKubeSpawner
    expected = "SPEOIDCAuthenticator" if extra else "SPEAuthenticator"
    assert _class(hub["authenticator_class"]).__name__ == expected
    assert hub["allow_named_servers"] is True and hub["redirect_to_server"] is False
    assert ("SPEOIDCAuthenticator" in config) == bool(extra)
    _check_traits(config)


def test_apply_kube_hub_config_fills_a_traitlets_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlets.config import Config

    c = Config()
    apply_kube_hub_config(c)
    assert c.JupyterHub.spawner_class == "spe.workspaces.kube_spawner.SPEKubeSpawner"
    assert c.SPEKubeSpawner.namespace == "spe"


@pytest.mark.parametrize(
    ("backend", "spawner"),
    [("local", "WorkspaceSpawner"), ("kubernetes", "SPEKubeSpawner")],
)
def test_the_local_hub_config_picks_the_spawner_from_the_setting(
    backend: str, spawner: str, tmp_path: Path
) -> None:
    settings = load_settings(state_dir=tmp_path, workspace_backend=backend, **OIDC)
    config = hub_config(settings, HubFiles(tmp_path / "hub"), HubSecrets("p", "c"))
    assert _class(config["JupyterHub"]["spawner_class"]).__name__ == spawner
    assert config["JupyterHub"]["authenticator_class"].endswith("SPEOIDCAuthenticator")
    assert config["SPEOIDCAuthenticator"]["client_id"] == "spe"
    _check_traits({k: v for k, v in config.items() if k == "SPEOIDCAuthenticator"})


def test_a_wrong_backend_is_refused_with_the_setting_named() -> None:
    from spe.config import ConfigError

    with pytest.raises(ConfigError, match="SPE_WORKSPACE_BACKEND"):
        load_settings(workspace_backend="docker")
