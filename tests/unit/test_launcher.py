"""Pure parts of the Kafka launcher: cluster ids, single-node properties, command lines, error paths."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.kafka.launcher import (
    MAIN_CLASS,
    KafkaBroker,
    broker_properties,
    java_command,
    log4j2_properties,
    random_cluster_id,
    render_properties,
)
from selfevolve.errors import BrokerError


def parse_properties(text: str) -> dict[str, str]:
    """java.util.Properties.load for one-line entries: the reading rules our writer must satisfy."""
    out = {}
    for line in text.splitlines():
        units, i, key, in_key = [], len(line) - len(line.lstrip(" ")), None, True
        if line[i:i + 1] in ("#", "!"):
            continue  # a comment line
        while i < len(line):
            ch = line[i]
            if ch == "\\":
                nxt = line[i + 1]
                if nxt == "u":
                    units.append(int(line[i + 2 : i + 6], 16))
                    i += 6
                    continue
                units.append(ord({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt)))
                i += 2
                continue
            if in_key and ch in "=: ":
                key, units, in_key = units, [], False
                i += 1
                while i < len(line) and line[i] == " ":  # blanks before a value are dropped
                    i += 1
                continue
            units.append(ord(ch))
            i += 1
        decode = lambda us: b"".join(u.to_bytes(2, "big") for u in us).decode("utf-16-be")  # noqa: E731
        out[decode(key if key is not None else units)] = decode(units) if key is not None else ""
    return out


def test_cluster_ids_are_distinct_kafka_uuids() -> None:
    ids = [random_cluster_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("process.roles", "broker,controller"),
        ("controller.quorum.voters", "1@127.0.0.1:9093"),
        ("listeners", "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"),
        ("advertised.listeners", "PLAINTEXT://127.0.0.1:9092"),
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        ("min.insync.replicas", "1"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("auto.create.topics.enable", "true"),
        ("num.partitions", "4"),
    ],
)
def test_single_node_properties(key: str, value: str) -> None:
    props = broker_properties(Path("/d/logs"), 9092, 9093, partitions=4)
    assert props[key] == value


def test_listeners_bind_loopback_only() -> None:
    props = broker_properties(Path("/d"), 1, 2)
    for key in ("listeners", "advertised.listeners", "controller.quorum.voters"):
        hosts = [part.split("//")[-1].split("@")[-1].rsplit(":", 1)[0] for part in props[key].split(",")]
        assert set(hosts) == {"127.0.0.1"}, key


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(st.dictionaries(TEXT.filter(bool), TEXT, max_size=10))
def test_render_properties_round_trips(props: dict[str, str]) -> None:
    assert parse_properties(render_properties(props)) == props


@pytest.mark.parametrize(
    ("value", "written"),
    [(r"C:\kafka\logs", r"C:\\kafka\\logs"), ("/home/zoë/k", r"/home/zo\u00eb/k"), (" x", r"\ x")],
)
def test_values_are_escaped_for_java(value: str, written: str) -> None:
    assert render_properties({"log.dirs": value}) == f"log.dirs={written}\n"


def test_log4j_writes_to_the_given_file_only() -> None:
    text = log4j2_properties(Path("/data/server.log"))
    assert "appender.file.fileName = /data/server.log" in text
    assert "Console" not in text


def test_java_command_runs_main_over_all_jars_with_the_heap_cap() -> None:
    cmd = java_command(Path("/c/libs"), "384m", Path("/d/log4j2.properties"), MAIN_CLASS, "/d/server.properties")
    assert cmd[0] == "java" and "-Xmx384m" in cmd
    assert cmd[cmd.index("-cp") + 1] == "/c/libs/*"
    assert cmd[-2:] == [MAIN_CLASS, "/d/server.properties"]
    assert "-Dlog4j2.configurationFile=/d/log4j2.properties" in cmd


def test_paths_are_versioned_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    broker = KafkaBroker(Path("cache"), Path("data"), port=1234, version="9.9.9")
    assert broker.libs_dir == tmp_path / "cache" / "kafka-9.9.9" / "libs"
    assert broker.data_dir.is_absolute() and broker.bootstrap == "127.0.0.1:1234"


def test_fetch_without_maven_raises_broker_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BrokerError, match="mvn"):
        KafkaBroker(tmp_path / "cache", tmp_path / "data").fetch()


def test_fetch_skips_maven_when_jars_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker(tmp_path / "cache", tmp_path / "data", version="1.2.3")
    broker.libs_dir.mkdir(parents=True)
    (broker.libs_dir / "kafka_2.13-1.2.3.jar").touch()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # mvn would be missing if it were called
    assert broker.fetch() == broker.libs_dir


def test_format_without_java_raises_broker_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BrokerError, match="java"):
        KafkaBroker(tmp_path / "cache", tmp_path / "data").format()


def test_formatted_data_dir_is_not_formatted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker(tmp_path / "cache", tmp_path / "data")
    broker.log_dir.mkdir(parents=True)
    (broker.log_dir / "meta.properties").write_text("cluster.id=keep\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # java would be missing if format ran it
    broker.format()
    assert (broker.log_dir / "meta.properties").read_text() == "cluster.id=keep\n"
    assert "process.roles=broker,controller" in broker.properties_file.read_text()


def test_stale_pid_file_is_not_running(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "cache", tmp_path / "data")
    broker.data_dir.mkdir(parents=True)
    # A live process that is not Kafka (pid reuse) must not count as the broker.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        broker.pid_file.write_text(f"{other.pid}\n")
        assert broker.pid() is None and not broker.is_running()
        broker.stop()  # nothing to stop; it must not kill the unrelated process
        assert other.poll() is None and not broker.pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_garbage_pid_file_is_not_running(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "cache", tmp_path / "data")
    broker.data_dir.mkdir(parents=True)
    broker.pid_file.write_text("not a pid")
    assert not broker.is_running()


SECURE = broker_properties(Path("/d"), 9092, 9093, security="sasl", admin_password="s3cret-Pw")


def test_secured_listeners_all_authenticate_and_acls_are_enforced() -> None:
    protocols = dict(p.split(":") for p in SECURE["listener.security.protocol.map"].split(","))
    assert protocols == {"CONTROLLER": "SASL_PLAINTEXT", "CLIENT": "SASL_PLAINTEXT"}  # nothing anonymous
    assert SECURE["listeners"] == "CLIENT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert SECURE["inter.broker.listener.name"] == "CLIENT"
    assert SECURE["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert SECURE["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert SECURE["super.users"] == "User:admin" and SECURE["allow.everyone.if.no.acl.found"] == "false"
    assert 'username="admin" password="s3cret-Pw"' in SECURE["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert 'user_admin="s3cret-Pw"' in SECURE["listener.name.controller.plain.sasl.jaas.config"]


def test_sasl_ssl_puts_the_client_listener_on_tls() -> None:
    tls = {"ssl.keystore.location": "/k.p12", "ssl.keystore.password": "x"}
    props = broker_properties(Path("/d"), 1, 2, security="sasl_ssl", admin_password="pw", tls=tls)
    assert "CLIENT:SASL_SSL" in props["listener.security.protocol.map"]
    assert props["listener.name.client.ssl.keystore.location"] == "/k.p12"
    with pytest.raises(BrokerError, match="keystore"):
        broker_properties(Path("/d"), 1, 2, security="sasl_ssl", admin_password="pw")


@pytest.mark.parametrize("password", ["", 'a"b', "a\\b", "a;b"])
def test_a_password_that_would_break_the_jaas_config_is_refused(password: str) -> None:
    with pytest.raises(BrokerError):
        broker_properties(Path("/d"), 1, 2, security="sasl", admin_password=password)


def test_security_off_is_plaintext_without_authorizer() -> None:
    props = broker_properties(Path("/d"), 1, 2)
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert "authorizer.class.name" not in props


def test_secured_format_keeps_the_password_off_the_command_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker(tmp_path / "cache", tmp_path / "data", security="sasl")
    seen = {}

    def fake_run(cmd, **kw):
        argfile = Path(cmd[-1][1:])
        seen.update(cmd=cmd, args=argfile.read_text(), mode=argfile.stat().st_mode & 0o777)
        broker.log_dir.mkdir(parents=True)
        (broker.log_dir / "meta.properties").write_text("cluster.id=x\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "run", fake_run)
    broker.format()
    password = broker.admin_password()
    assert password and all(password not in part for part in seen["cmd"])
    assert f"--add-scram\nSCRAM-SHA-512=[name=admin,password={password}]" in seen["args"]
    assert seen["mode"] == 0o600 and not list(broker.secrets_dir.glob("format.args"))  # removed after use
    for f in (broker.properties_file, broker.admin_password_file):
        assert f.stat().st_mode & 0o777 == 0o600
    assert broker.secrets_dir.stat().st_mode & 0o777 == 0o700
    # The same data dir cannot be started with security off: its clients would have no credential.
    with pytest.raises(BrokerError, match="formatted with Kafka security 'sasl'"):
        KafkaBroker(tmp_path / "cache", tmp_path / "data").format()


def test_unknown_security_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="security mode"):
        KafkaBroker(tmp_path / "cache", tmp_path / "data", security="plaintext")
