"""Gateway API keys on disk: one 0600 JSON file of hashed keys shared by every gateway of a host or volume.

Why a file and not a compacted Kafka topic: a key is a credential, and every credential of this project
lives in the 0600 secrets folder, readable by its owner only. On the broker, the serve and history
principals read every topic under the prefix (infra/kafka/security.py), so a keys topic would hand the key
hashes, tenants and limits to every worker. Gateways on one host (or one compose volume) share the file;
each re-reads it when it changes, so `selfevolve keys create` takes effect without a restart. What must be
consistent across gateways, the spend, is not here: every gateway folds it from the answers topics.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from infra.kafka.credentials import write_private
from selfevolve.config import Settings
from selfevolve.errors import ConfigError, ValidationError
from selfevolve.wire.apikeys import KEY_PREFIX, KeyEntry, KeyTable, hash_key
from selfevolve.wire.tenancy import check_tenant


def keys_file(settings: Settings) -> Path:
    return settings.gateway_keys_file or settings.home / "secrets" / "gateway_keys.json"


def new_key() -> str:
    """sk-se- and 32 random bytes (url-safe base64, no padding): 256 bits, so a fast hash stores it safely."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def read_table(path: Path) -> KeyTable:
    if not path.exists():
        return KeyTable()
    try:
        return KeyTable.from_json(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        raise ConfigError(f"gateway key file {path} is not a key table: {e}") from e


@contextmanager
def _locked(path: Path):
    """Serialise writers (two `keys create` at once must not lose one): an flock beside the file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_key(settings: Settings, tenant: str, *, budget_usd_day: float | None = None,
               rate_per_min: float | None = None, name: str = "") -> tuple[str, KeyEntry]:
    """Make a key for tenant, store its hash, and return the key (shown once: it is stored nowhere)."""
    check_tenant(tenant)
    key, path = new_key(), keys_file(settings)
    entry = KeyEntry(hash_key(key), tenant, int(time.time() * 1000), budget_usd_day, rate_per_min, name)
    with _locked(path):
        table = read_table(path).add(entry)
        write_private(path, json.dumps(table.to_json(), indent=1) + "\n")
    return key, entry


def revoke_key(settings: Settings, prefix: str) -> KeyEntry:
    path = keys_file(settings)
    with _locked(path):
        table, gone = read_table(path).revoke(prefix)
        write_private(path, json.dumps(table.to_json(), indent=1) + "\n")
    return gone


class KeyFile:
    """The key table as the gateway sees it: re-read when the file changes (checked at most once a second)."""

    def __init__(self, path: Path) -> None:
        self.path, self._stamp, self._checked, self.table = path, None, 0.0, KeyTable()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> KeyTable:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return self.table
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self.table = read_table(self.path) if stamp else KeyTable()
            self._stamp = stamp
        return self.table
