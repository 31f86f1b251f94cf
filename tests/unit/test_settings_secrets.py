"""Secrets in Settings: SecretStr everywhere, never shown, never exported to a child, read from 0600 files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.kafka.security import secret_file, write_secrets
from selfevolve.config import Settings
from streams.kafka_io import client_options, faust_credentials
from streams.stack import child_env, provision_roles, role_of, services

SECRETS = {"openai_api_key": "sk-OPENAI-not-for-children", "kafka_password": "kafka-PW-of-parent",
           "clickhouse_password": "ch-PW-secret"}


def _settings(**kw) -> Settings:
    return Settings(kafka_security="sasl", kafka_username="admin", **SECRETS, **kw)


def test_every_secret_field_is_a_secretstr():
    s = _settings()
    for name in SECRETS:
        assert isinstance(getattr(s, name), SecretStr), name


@pytest.mark.parametrize("show", [repr, str, lambda s: s.model_dump_json(), lambda s: str(s.model_dump()),
                                  lambda s: str(s.to_env())])
def test_no_rendering_of_settings_contains_a_secret(show):
    text = show(_settings())
    for value in SECRETS.values():
        assert value not in text


def test_to_env_exports_no_secret_and_no_principal():
    env = _settings(secrets_dir=Path("/x")).to_env()
    for name in ("OPENAI_API_KEY", "KAFKA_PASSWORD", "CLICKHOUSE_PASSWORD", "KAFKA_USERNAME", "SECRETS_DIR"):
        assert f"SELFEVOLVE_{name}" not in env
    assert env["SELFEVOLVE_KAFKA_SECURITY"] == "sasl"  # the rest still reaches the children


def test_a_password_in_the_clickhouse_url_is_refused():
    with pytest.raises(ValueError, match="clickhouse_url must not carry a password"):
        Settings(clickhouse_url="http://default:hunter2@clickhouse:8123/db")


def test_load_reads_the_secrets_folder_named_by_the_environment(tmp_path, monkeypatch):
    folder = write_secrets(tmp_path / "serve", {"kafka_username": "serve", "kafka_password": "pw-1"})
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(secret_file(folder, "kafka_password").stat().st_mode) == 0o600
    monkeypatch.setenv("SELFEVOLVE_SECRETS_DIR", str(folder))
    s = Settings.load(kafka_security="sasl")
    assert s.kafka_username == "serve" and s.kafka_password.get_secret_value() == "pw-1"
    opts = client_options(s)
    assert opts["sasl_plain_username"] == "serve" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    creds = faust_credentials(s)["broker_credentials"]
    assert creds.username == "serve" and "pw-1" not in repr(creds)


def test_child_env_never_holds_a_secret_even_one_the_parent_inherited(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"SELFEVOLVE_{name.upper()}", value)
    monkeypatch.setenv("selfevolve_kafka_username", "admin")  # the variables are case-insensitive
    parent = Settings(home=tmp_path, kafka_security="none")
    assert parent.openai_api_key.get_secret_value() == SECRETS["openai_api_key"]
    provision_roles(parent, parent)  # security off: writes only the non-Kafka secrets, per role
    for svc in services(parent, live=True):
        role = role_of(svc.name)
        env = child_env(parent, role)
        blob = "\n".join(f"{k}={v}" for k, v in env.items())
        for value in SECRETS.values():
            assert value not in blob, (svc.name, value)
        assert "selfevolve_kafka_username" not in {k.lower() for k in env}
        assert env["SELFEVOLVE_SECRETS_DIR"] == str(tmp_path / "secrets" / role)
    # The key went to the model role's folder (0600), and only there.
    model = tmp_path / "secrets" / "model"
    assert secret_file(model, "openai_api_key").read_text() == SECRETS["openai_api_key"]
    assert not secret_file(tmp_path / "secrets" / "serve", "openai_api_key").exists()
    assert secret_file(tmp_path / "secrets" / "history", "clickhouse_password").exists()
    assert stat.S_IMODE(os.stat(secret_file(model, "openai_api_key")).st_mode) == 0o600
    # A child of that environment builds its Settings with the key from the file.
    monkeypatch.delenv("SELFEVOLVE_OPENAI_API_KEY")
    monkeypatch.setenv("SELFEVOLVE_SECRETS_DIR", str(model))
    assert Settings.load().openai_api_key.get_secret_value() == SECRETS["openai_api_key"]


def test_the_supervisor_gets_no_secrets_folder():
    assert role_of("supervisor") is None
    assert "SELFEVOLVE_SECRETS_DIR" not in child_env(Settings(), None)


def test_the_secrets_folders_are_private(tmp_path):
    parent = Settings(home=tmp_path, openai_api_key="sk-x")
    provision_roles(parent, parent)
    for folder in [tmp_path / "secrets", *(tmp_path / "secrets").iterdir()]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
