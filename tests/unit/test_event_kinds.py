"""The thirteen event kinds are listed once (selfevolve/wire/topics.py STAGES) and everything else agrees with it:
the Avro schemas, the codec, the folds' KINDS, the store's tables and the ClickHouse DDL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from selfevolve.flow.events import KINDS
from selfevolve.wire.codec import Codec
from selfevolve.wire.topics import STAGES
from streams.store import DDL_PATH, TABLES

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
THE_LIST = ROOT / "selfevolve" / "wire" / "topics.py"
# A literal naming this many of the kinds (or of their stages, or tables) is a second hand-written list.
MOST = 8


def test_there_are_thirteen_kinds_one_per_stage():
    assert len(STAGES) == 13 and len(set(STAGES.values())) == 13


def test_schema_files_codec_and_folds_name_the_same_kinds():
    kinds = sorted(STAGES.values())
    assert sorted(p.stem for p in SCHEMAS.glob("*.avsc")) == kinds
    assert sorted(Codec.from_dir().kinds()) == kinds
    assert KINDS == {kind: stage for stage, kind in STAGES.items()}


def test_the_store_has_one_table_per_kind_and_the_ddl_creates_each():
    assert sorted(TABLES) == sorted(STAGES.values())
    assert len(set(TABLES.values())) == len(TABLES)
    created = set(re.findall(r"CREATE TABLE IF NOT EXISTS selfevolve\.(\w+)", DDL_PATH.read_text()))
    assert created == set(TABLES.values())


def _literal_lists(path: Path) -> list[tuple[int, str, int]]:
    """(line, what, how many) of every tuple, list, set or dict literal naming MOST or more kinds, stages or
    tables."""
    names = {"kinds": set(STAGES.values()), "stages": set(STAGES), "tables": set(TABLES.values())}
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None] + node.values
        else:
            continue
        strings = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        out += [(node.lineno, what, len(strings & ns)) for what, ns in names.items() if len(strings & ns) >= MOST]
    return out


SOURCES = sorted(p for pkg in ("selfevolve", "streams", "workers", "bench", "infra", "tests")
                 for p in (ROOT / pkg).rglob("*.py") if p != THE_LIST)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_other_hand_written_list_of_the_kinds(path):
    found = _literal_lists(path)
    assert not found, (f"{path.relative_to(ROOT)} lists the kinds by hand (line, what, how many): {found}; derive "
                       "it from selfevolve.wire.topics.STAGES (or streams.store.TABLES)")


def test_the_list_detector_sees_a_list(tmp_path):
    f = tmp_path / "f.py"
    f.write_text(f"A = {tuple(sorted(TABLES.values()))!r}\nB = ('query', 'answer')\n")
    assert _literal_lists(f) == [(1, "tables", 13)]
    assert {(what, n) for _, what, n in _literal_lists(THE_LIST)} >= {("kinds", 13), ("stages", 13)}
