"""Integration fixtures: one real KRaft Kafka broker per session (SASL/SCRAM with the StandardAuthorizer, as in
production), and per-test topics and Settings (signed in as the broker's super user unless told otherwise)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.kafka.launcher import KafkaBroker
from infra.kafka.security import ADMIN_USER
from infra.ports import free_ports
from selfevolve.config import Settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything in this folder needs the broker, so `-m "not integration"` must skip it all.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_cache_dir() -> Path:
    """The shared jar cache, so the jars are fetched from Maven Central once per checkout."""
    return Settings().cache_dir / "kafka"


@pytest.fixture(scope="session")
def new_broker(tmp_path_factory: pytest.TempPathFactory,
               kafka_cache_dir: Path) -> Iterator[Callable[..., KafkaBroker]]:
    """Factory of extra, not yet started brokers on free ports (security "sasl" unless told: "none",
    "sasl_ssl"); each is stopped at session end."""
    made: list[KafkaBroker] = []

    def make(security: str = "sasl") -> KafkaBroker:
        port, controller = free_ports(2)
        broker = KafkaBroker(kafka_cache_dir, tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller,
                             security=security)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(new_broker: Callable[[], KafkaBroker]) -> KafkaBroker:
    """The session's broker, started fresh in a tmp folder with SASL/SCRAM and the StandardAuthorizer (only
    its admin exists until a test provisions more); tests must not stop it."""
    broker = new_broker()
    broker.start()
    return broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test shares, so tests never read each other's topics or groups."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def make_settings(kafka_broker: KafkaBroker, topic_prefix: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings bound to the test broker (as its super user), the test's topics and a tmp home; kwargs
    override any field (kafka_username/kafka_password: another principal)."""

    def make(**overrides: object) -> Settings:
        fields: dict[str, object] = {
            "kafka_bootstrap": kafka_broker.bootstrap, "topic_prefix": topic_prefix, "home": tmp_path,
            "kafka_security": kafka_broker.security, "kafka_username": ADMIN_USER,
            "kafka_password": kafka_broker.admin_password(), "kafka_ca_file": kafka_broker.ca_file}
        fields.update(overrides)
        return Settings(**fields)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
