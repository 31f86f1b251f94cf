"""Who signs in to the broker and the files that prove it: the admin principal, the SCRAM mechanism, the
broker's TLS material and 0600 secret files (a process's secrets folder)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from pydantic import SecretStr

from selfevolve.errors import BrokerError
from streams.kafka_io import SCRAM_MECHANISM  # the clients' mechanism is the broker's

ADMIN_USER = "admin"  # the one super user: tooling, tests, topic and ACL creation


def write_private(path: Path, text: str) -> None:
    """Write text to a file only its owner can read, in a folder only its owner can enter; atomic."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def secret_file(folder: Path, field: str) -> Path:
    """Where Settings.load() finds `field` in a secrets folder (pydantic-settings names it with the prefix)."""
    return folder / f"selfevolve_{field}"


def write_secrets(folder: Path, values: dict[str, str | SecretStr]) -> Path:
    """A secrets folder (Settings.secrets_dir) holding `values`, one 0600 file per Settings field."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for field, value in values.items():
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        write_private(secret_file(folder, field), text)
    folder.chmod(0o700)
    return folder


def make_tls(tls_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> dict[str, str]:
    """A private CA and a broker certificate it signs (for `hosts`), made once with openssl; returns the
    listener's ssl.* properties. The CA's key is deleted once the certificate is signed, so nothing on
    disk can mint another certificate that clients of this broker would trust."""
    keystore, password_file = tls_dir / "broker.p12", tls_dir / "keystore-password"
    if not keystore.exists():
        if shutil.which("openssl") is None:
            raise BrokerError("openssl not found on PATH: it makes the broker's TLS certificate "
                              "(apt-get install openssl)")
        write_private(password_file, secrets.token_urlsafe(24))
        san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
        write_private(tls_dir / "san.cnf", f"subjectAltName={san}\n")
        env = {**os.environ, "SELFEVOLVE_KS": password_file.read_text().strip()}  # never in argv
        steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=selfevolve-kafka-ca",
             "-keyout", "ca.key", "-out", "ca.pem"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}", "-keyout", "broker.key",
             "-out", "broker.csr"],
            ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "825", "-extfile", "san.cnf", "-out", "broker.pem"],
            ["pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
             "-name", "broker", "-passout", "env:SELFEVOLVE_KS", "-out", "broker.p12.tmp"],
        ]  # fmt: skip
        old_umask = os.umask(0o077)
        try:
            for step in steps:
                done = subprocess.run(["openssl", *step], cwd=tls_dir, env=env, capture_output=True, text=True,
                                      check=False)
                if done.returncode != 0:
                    raise BrokerError(f"openssl {step[0]} failed (exit {done.returncode}): {done.stderr[-1000:]}")
        finally:
            os.umask(old_umask)
            for name in ("ca.key", "broker.key", "broker.csr", "ca.srl", "san.cnf"):
                (tls_dir / name).unlink(missing_ok=True)
        (tls_dir / "broker.p12.tmp").rename(keystore)
        (tls_dir / "ca.pem").chmod(0o644)  # the CA certificate is public: clients need it
    password = password_file.read_text().strip()
    return {
        "ssl.keystore.type": "PKCS12", "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": password, "ssl.key.password": password,
        # The broker's own inter-broker client trusts the same CA.
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls_dir / "ca.pem"),
    }  # fmt: skip


__all__ = ["ADMIN_USER", "SCRAM_MECHANISM", "make_tls", "secret_file", "write_private", "write_secrets"]
