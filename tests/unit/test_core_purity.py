"""The core library stays free of Kafka, Faust and ClickHouse imports, and does no I/O at import."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import selfevolve

FORBIDDEN = ("kafka", "aiokafka", "faust", "mode", "chdb", "clickhouse_connect", "confluent_kafka")
CORE = Path(selfevolve.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_no_broker_or_store(path):
    assert not (_imports(path) & set(FORBIDDEN)), f"{path} imports {_imports(path) & set(FORBIDDEN)}"


def test_detector_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom aiokafka import AIOKafkaProducer\n")
    assert "aiokafka" in _imports(bad)


def test_every_core_module_has_a_docstring():
    missing = [str(p.relative_to(CORE)) for p in CORE.rglob("*.py")
               if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a purpose docstring: {missing}"


def test_only_config_reads_the_environment():
    offenders = []
    for p in CORE.rglob("*.py"):
        src = p.read_text()
        if p.name != "config.py" and ("os.environ[" in src or "os.getenv(" in src or "environ.get(" in src):
            offenders.append(str(p.relative_to(CORE)))
    assert not offenders, f"read the environment outside Settings: {offenders}"
