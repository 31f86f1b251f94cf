"""The core's purity rule, enforced as written (README "How we write code"; notes/purity_rule.md holds the words).

1. Nothing in selfevolve/ imports a broker, store, HTTP or web client (CLIENTS).
2. Importing any selfevolve/ module does no I/O: no file, directory, process, socket or environment access runs
   from module code (an audit hook watches every module of the core being imported).
3. File, process and environment I/O happens only in IO_MODULES, each named with what it does.
4. Every other module (the folds in flow/ and the rules in routing/, scoring/, evolution/, wire/, store/, models/,
   distill/) is pure: it imports only PURE_IMPORTS and the core; calls no open/print/input/exec/eval, no path
   I/O method, no Settings() (the environment), no clock, and draws randomness only from a seeded generator
   (random.Random(seed), numpy's default_rng(seed)). It may call objects of the I/O modules it is handed (the
   embedder loading its model, the code check running its sandbox): that is the fold's environment.

The lists below are the rule: change them, and the README's words with them, when a module changes its nature.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import selfevolve

CORE = Path(selfevolve.__file__).parent

# 1. Never imported anywhere in selfevolve/ (a dotted name forbids its submodules too).
CLIENTS = ("aiokafka", "kafka", "confluent_kafka", "faust", "mode", "chdb", "clickhouse_connect", "httpx",
           "requests", "urllib3", "urllib.request", "http", "aiohttp", "socket", "ssl", "websockets", "fastapi",
           "starlette", "uvicorn", "grpc", "openai")

# 3. The modules that may touch files, processes or the environment (paths relative to selfevolve/).
IO_MODULES = {
    "config.py": "reads the environment and the secrets folder: the only code that reads the environment",
    "wire/codec.py": "reads the Avro schemas (schemas/*.avsc)",
    "models/catalogue.py": "reads the model catalogue (YAML)",
    "models/serving.py": "awaits a model backend and times the call (the model worker's request handler)",
    "routing/embed.py": "loads the sentence-embedding model from its package, once, on first use",
    "routing/embed_cache.py": "keeps precomputed query vectors in a file (replays and benchmarks)",
    "routing/history.py": "saves and loads the routing history (FAISS index, JSON lines); main() measures it",
    "scoring/sandbox.py": "runs an answer's code in bubblewrap (a subprocess, temporary files)",
    "scoring/checkers.py": "runs the sandbox for code answers on a thread pool, and logs when it cannot",
    "data/routerbench.py": "reads RouterBench-format CSVs",
    "data/routellm.py": "converts RouteLLM's GSM8K files into a RouterBench-format set (a script)",
    "data/make_demo.py": "writes the demo's CSVs (a script)",
    "distill/data.py": "reads training sets (CSV, JSON lines)",
    "distill/lm.py": "loads language models and converts GGUF files into the cache",
    "distill/train.py": "saves and loads adapter checkpoints (safetensors); prints progress",
    "distill/live.py": "runs a training round and writes its checkpoint under settings.home",
}

# 4. What a pure module may import besides the core (first component of the dotted name).
PURE_IMPORTS = ("__future__", "abc", "base64", "bisect", "collections", "copy", "dataclasses", "enum", "functools",
                "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics",
                "string", "struct", "types", "typing", "unicodedata", "numpy")
# ... and, per package, tensor libraries for the student's math (no I/O of their own is called: rule 4's calls).
PURE_EXTRA = {"distill/": ("torch", "peft")}
BUILTIN_IO = frozenset({"open", "print", "input", "exec", "eval", "compile", "breakpoint", "__import__"})
PATH_IO = frozenset({"read_text", "write_text", "read_bytes", "write_bytes", "open", "mkdir", "rmdir", "unlink",
                     "touch", "iterdir", "glob", "rglob", "exists", "is_file", "is_dir", "stat", "lstat", "chmod",
                     "rename", "resolve", "readlink", "symlink_to", "hardlink_to", "samefile", "expanduser", "cwd"})
SEEDED = frozenset({"Random", "default_rng", "Generator", "SeedSequence", "PCG64"})  # random sources taking a seed


def _rel(path: Path) -> str:
    return path.relative_to(CORE).as_posix()


MODULES = sorted(CORE.rglob("*.py"))
PURE = [p for p in MODULES if _rel(p) not in IO_MODULES]


def _imports(path: Path) -> set[str]:
    """Every dotted name a module imports, absolute (`from a import b` gives both a and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _hits(names: set[str], forbidden: tuple[str, ...]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


def _impure_imports(path: Path, rel: str = "") -> set[str]:
    rel = rel or _rel(path)
    allowed = set(PURE_IMPORTS) | {"selfevolve"}
    allowed |= {m for prefix, extra in PURE_EXTRA.items() if rel.startswith(prefix) for m in extra}
    return {n for n in _imports(path) if n.split(".")[0] not in allowed}


def _impure_calls(path: Path) -> list[str]:
    """What a pure module's code calls that does I/O, reads the environment or the clock, or draws unseeded."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            out += [f"from random import {a.name}" for a in node.names if a.name not in SEEDED]
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        where = f"line {node.lineno}: {ast.unparse(f)}()"
        if isinstance(f, ast.Name) and (f.id in BUILTIN_IO or f.id == "Settings"):
            out.append(where)
        elif isinstance(f, ast.Attribute):
            owner = ast.unparse(f.value)
            if f.attr in PATH_IO or (owner == "Settings" and f.attr == "load"):
                out.append(where)
            elif owner in ("random", "np.random", "numpy.random") and f.attr not in SEEDED:
                out.append(where)
    return out


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_core_module_imports_no_client(path):
    assert not _hits(_imports(path), CLIENTS), f"{_rel(path)} imports {_hits(_imports(path), CLIENTS)}"


@pytest.mark.parametrize("path", PURE, ids=_rel)
def test_pure_module_imports_only_pure_modules(path):
    assert not _impure_imports(path), (f"{_rel(path)} imports {sorted(_impure_imports(path))}: pure modules import "
                                       f"only {PURE_IMPORTS} and the core (or it belongs in IO_MODULES)")


@pytest.mark.parametrize("path", PURE, ids=_rel)
def test_pure_module_does_no_io(path):
    assert not _impure_calls(path), f"{_rel(path)} does I/O, reads the environment or draws unseeded: " \
                                    f"{_impure_calls(path)}"


def test_io_modules_exist():
    missing = [m for m in IO_MODULES if not (CORE / m).is_file()]
    assert not missing, f"IO_MODULES names modules that are gone: {missing} (update the rule and the README)"


# 2. The audit hook sees every file open, directory listing, process, socket and environment write; one that
# runs from a core module's code (not from the import machinery loading a module) is I/O at import.
_AUDIT = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    root, package = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    pkg = importlib.import_module(package)
    base = pkg.__path__[0]
    WATCH = ("open", "os.", "subprocess.", "socket.", "shutil.", "tempfile.", "glob.", "urllib.", "http.",
             "sqlite3.")
    hits = []
    def hook(event, args):
        if not event.startswith(WATCH):
            return
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith("<frozen importlib"):
                return  # the import machinery reading a module: not the module's own code
            if name.startswith(base):
                hits.append([event, str(args)[:160], name[len(base) + 1:], frame.f_lineno])
                return
            frame = frame.f_back
    sys.addaudithook(hook)
    for m in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(m.name)
    print(json.dumps(hits))
""")


def _io_at_import(root: Path, package: str) -> list:
    done = subprocess.run([sys.executable, "-c", _AUDIT, str(root), package], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_core_does_no_io():
    hits = _io_at_import(CORE.parent, "selfevolve")
    assert not hits, f"I/O at import (event, arguments, module, line): {hits}"


def test_detectors_see_what_they_forbid(tmp_path):
    pkg = tmp_path / "fakecore"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "loud.py").write_text('"""x"""\nfrom pathlib import Path\nTEXT = Path(__file__).read_text()\n')
    (pkg / "quiet.py").write_text('"""x"""\nimport json\n\ndef later(p):\n    return open(p).read()\n')
    hits = _io_at_import(tmp_path, "fakecore")
    assert [(h[0], h[2]) for h in hits] == [("open", "loud.py")]
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport random\nfrom aiokafka import AIOKafkaProducer\nfrom urllib import request\n"
                   "from selfevolve.config import Settings\nx = random.random()\nr = random.Random(1)\n"
                   "s = Settings()\nprint(open('f').read())\np.write_text('x')\n")
    assert _hits(_imports(bad), CLIENTS) == {"aiokafka", "aiokafka.AIOKafkaProducer", "urllib.request"}
    calls = _impure_calls(bad)
    assert sorted(c.split(": ")[1] for c in calls) == ["Settings()", "open()", "p.write_text()", "print()",
                                                       "random.random()"]
    assert _impure_imports(bad, "flow/bad.py") == {"os", "aiokafka", "aiokafka.AIOKafkaProducer", "urllib",
                                                   "urllib.request"}


def test_every_core_module_has_a_docstring():
    missing = [_rel(p) for p in MODULES if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a purpose docstring: {missing}"


def test_only_config_reads_the_environment():
    offenders = []
    for p in MODULES:
        src = p.read_text()
        if p.name != "config.py" and ("os.environ[" in src or "os.getenv(" in src or "environ.get(" in src):
            offenders.append(_rel(p))
    assert not offenders, f"read the environment outside Settings: {offenders}"
