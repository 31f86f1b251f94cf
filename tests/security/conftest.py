"""Security tests run against the real broker and store: they reuse the integration fixtures as they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_integration_conftest", Path(__file__).resolve().parent.parent / "integration" / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

free_ports = _integration.free_ports
kafka_cache_dir = _integration.kafka_cache_dir
new_broker = _integration.new_broker
kafka_broker = _integration.kafka_broker
kafka_bootstrap = _integration.kafka_bootstrap
topic_prefix = _integration.topic_prefix
make_settings = _integration.make_settings
settings = _integration.settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.security)
