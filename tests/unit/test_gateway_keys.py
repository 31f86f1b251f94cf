"""The gateway's key file: a key is printed once and stored only as its hash, 0600; gateways see changes."""

from __future__ import annotations

import os
import stat

import pytest

from selfevolve.config import Settings
from selfevolve.errors import ConfigError, ValidationError
from selfevolve.wire.apikeys import well_formed
from streams.gateway_keys import KeyFile, create_key, keys_file, revoke_key


def test_a_created_key_is_stored_hashed_private_and_seen_by_a_running_gateway(tmp_path):
    settings = Settings(home=tmp_path)
    seen = KeyFile(keys_file(settings))
    assert seen.table.lookup("sk-se-" + "A" * 43) is None
    key, entry = create_key(settings, "acme", budget_usd_day=2.0)
    path = keys_file(settings)
    assert well_formed(key) and key not in path.read_text() and entry.key_hash in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert seen.refresh(force=True).lookup(key).budget_usd_day == 2.0
    other, _ = create_key(settings, "beta")
    assert other != key and seen.refresh(force=True).lookup(other).tenant == "beta"
    revoke_key(settings, entry.key_id)
    assert seen.refresh(force=True).lookup(key) is None and seen.table.lookup(other) is not None


def test_bad_tenants_and_a_broken_file_are_refused(tmp_path):
    settings = Settings(home=tmp_path)
    with pytest.raises(ValidationError):
        create_key(settings, "Not A Tenant")
    keys_file(settings).parent.mkdir(parents=True)
    keys_file(settings).write_text("{not json")
    with pytest.raises(ConfigError):
        KeyFile(keys_file(settings))
