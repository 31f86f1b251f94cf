"""Each setting lives once, in Settings, and is passed down: no parameter or field named like a Settings field
carries a default of its own, and the declared defaults (config.DEFAULTS) serve only as defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from selfevolve.config import DEFAULTS, Settings

ROOT = Path(__file__).resolve().parents[2]
CODE = sorted(p for pkg in ("selfevolve", "streams", "workers", "bench", "infra") for p in (ROOT / pkg).rglob("*.py")
              if p != ROOT / "selfevolve" / "config.py")
FIELDS = frozenset(Settings.model_fields)


def _literal(node: ast.AST | None) -> bool:
    """A value written out (a number, string, bool, or a tuple of them); None means "from the settings"."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_literal(e) for e in node.elts)
    return False


def _shadows(path: Path) -> list[str]:
    """Parameters and class fields named like a Settings field whose default is written out here."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += list(zip(a.kwonlyargs, a.kw_defaults))
            out += [f"{node.name}({arg.arg}={ast.unparse(d)})" for arg, d in pairs
                    if arg.arg in FIELDS and _literal(d)]
        elif isinstance(node, ast.ClassDef):
            out += [f"{node.name}.{b.target.id} = {ast.unparse(b.value)}" for b in node.body
                    if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name) and b.target.id in FIELDS
                    and _literal(b.value)]
    return out


def _defaults_misused(path: Path) -> list[int]:
    """Lines that read DEFAULTS anywhere but a default: a parameter's, a class field's, or a module DEFAULT_*."""
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed: set[int] = set()
    for node in ast.walk(tree):
        roots: list[ast.AST] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots = [d for d in node.args.defaults + node.args.kw_defaults if d is not None]
        elif isinstance(node, ast.ClassDef):
            roots = [b.value for b in node.body if isinstance(b, (ast.AnnAssign, ast.Assign)) and b.value]
        elif isinstance(node, ast.Module):
            roots = [b.value for b in node.body if isinstance(b, ast.Assign)
                     and all(isinstance(t, ast.Name) and t.id.lstrip("_").startswith("DEFAULT") for t in b.targets)]
        allowed |= {id(n) for r in roots for n in ast.walk(r)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "DEFAULTS" and id(n) not in allowed]


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_default_shadows_a_setting(path):
    found = _shadows(path)
    assert not found, (f"{path.relative_to(ROOT)}: {found}: a Settings field's value is written again; take it "
                       "from the settings passed in (None = from settings) or from config.DEFAULTS")


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_declared_defaults_serve_only_as_defaults(path):
    assert not _defaults_misused(path), (f"{path.relative_to(ROOT)} reads config.DEFAULTS at lines "
                                         f"{_defaults_misused(path)}: use the settings passed down")


def test_defaults_are_the_declared_ones_and_read_no_environment(monkeypatch):
    monkeypatch.setenv("SELFEVOLVE_THETA_HIGH", "0.99")
    assert Settings().theta_high == 0.99
    assert Settings.model_construct() == DEFAULTS and DEFAULTS.theta_high == Settings.model_fields["theta_high"].default
    for name, field in Settings.model_fields.items():
        assert getattr(DEFAULTS, name) == field.get_default(call_default_factory=True), name


def test_the_core_takes_its_defaults_from_settings():
    from infra.kafka.launcher import KafkaBroker
    from selfevolve.scoring import arbiter, checkers, scoring, sandbox

    assert scoring.DEFAULT_WEIGHTS == DEFAULTS.score_weights == arbiter.State().weights
    assert sandbox.Limits() == sandbox.Limits.from_settings(DEFAULTS) == checkers.DEFAULT_LIMITS
    assert arbiter.State().code_limits == checkers.DEFAULT_LIMITS
    assert KafkaBroker(Path("c"), Path("d")).bootstrap.endswith(DEFAULTS.kafka_bootstrap.rsplit(":", 1)[1])


def test_detectors_see_a_shadow_and_a_misuse(tmp_path):
    f = tmp_path / "f.py"
    f.write_text("from selfevolve.config import DEFAULTS\n"
                 "DEFAULT_X = DEFAULTS.theta_high\n"
                 "def route(text, theta_high=0.8, theta_low=None, knn_k=DEFAULTS.knn_k, *, max_domains=-3):\n"
                 "    return DEFAULTS.theta_low\n"
                 "class Cfg:\n    window_size: int = 100\n    sql_port: int = DEFAULTS.sql_port\n")
    assert _shadows(f) == ["route(theta_high=0.8)", "route(max_domains=-3)", "Cfg.window_size = 100"]
    assert _defaults_misused(f) == [4]
