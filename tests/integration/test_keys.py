"""Keys: the platform key file is created 0600 and checked; keys never appear in logs, reprs,
exceptions or pickles; a wrong platform key is refused with a sentence, not a traceback."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import traceback

import pytest

from spe.config import load_settings, reset_settings
from spe.db import readonly
from spe.keys.platform import KeyStoreError, PlatformKey, load_platform_key
from spe.keys.signing import checkpoint_signer


def _forms(raw: bytes) -> list[str]:
    return [raw.hex(), base64.b64encode(raw).decode(), raw.hex().upper(), repr(raw)]


def test_platform_key_file_is_created_private(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    key = load_platform_key(settings)
    path = tmp_path / "keys" / "platform.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    assert load_platform_key(settings).key_id == key.key_id


def test_platform_key_file_readable_by_others_is_refused(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    load_platform_key(settings)
    path = tmp_path / "keys" / "platform.key"
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        load_platform_key(settings)


def test_platform_key_from_environment_must_be_32_bytes(tmp_path):
    bad = load_settings(state_dir=tmp_path, platform_key=base64.b64encode(b"short").decode())
    with pytest.raises(KeyStoreError, match="32 bytes"):
        load_platform_key(bad)
    garbage = load_settings(state_dir=tmp_path, platform_key="not base64 !!")
    with pytest.raises(KeyStoreError, match="base64"):
        load_platform_key(garbage)


def test_wrapped_key_does_not_open_with_another_platform_key():
    a, b = PlatformKey(os.urandom(32)), PlatformKey(os.urandom(32))
    blob = a.wrap(b"secret material!", "ctx")
    assert a.unwrap(blob, "ctx") == b"secret material!"
    with pytest.raises(KeyStoreError, match="does not open"):
        b.unwrap(blob, "ctx")
    with pytest.raises(KeyStoreError):
        a.unwrap(blob, "other context")


def test_keys_never_appear_in_reprs_logs_exceptions_or_pickles(spe_env, caplog):
    raw = base64.b64decode(
        (load_settings().platform_key_file).read_text()  # type: ignore[union-attr]
    )
    caplog.set_level(logging.DEBUG)
    platform = load_platform_key()
    with readonly() as s:
        signer = checkpoint_signer(s, platform)
        private_raw = signer._CheckpointSigner__private.private_bytes_raw()  # test-only peek
    texts = [repr(platform), str(platform), repr(signer), str(signer)]
    logging.getLogger("spe.test").info("platform %s signer %s", platform, signer)
    texts.append(caplog.text)
    try:
        platform.unwrap(b"\x01" + b"\x00" * 40, "ctx")
    except KeyStoreError:
        texts.append(traceback.format_exc())
    for obj in (platform, signer):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    joined = "\n".join(texts)
    for secret in (raw, private_raw):
        for form in _forms(secret):
            assert form not in joined


def test_config_show_masks_the_platform_key_and_database_password(run_spe):
    key = base64.b64encode(os.urandom(32)).decode()
    out = run_spe(
        "config",
        "show",
        env={
            "SPE_PLATFORM_KEY": key,
            "SPE_DATABASE_URL": "postgresql+psycopg://spe:hunter2secret@db.example/spe",
        },
    )
    assert out.returncode == 0, out.stderr
    assert key not in out.stdout and "hunter2secret" not in out.stdout
    assert "********" in out.stdout
    reset_settings()
