"""The attacks of `selfevolve bench security` on what runs beside the pipeline: the code sandbox (checkers.run_code
directly), the SQL endpoint, and secrets (Settings' repr, workers' environments, docker-compose.yml)."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from bench.security import Result
from bench.security_attacks import Ctx
from selfevolve.config import Settings


# ---- the code sandbox: checkers.run_code directly -----------------------------------------------------------------

def sandbox_attacks(ctx: Ctx, broker_port: int) -> list[Result]:
    """Each escape asserts that it worked: the check reporting `ran` means the code got there."""
    import os

    from selfevolve.scoring import checkers

    outside = ctx.scratch / "sandbox-wrote-here"
    tag = f"{random.randrange(10**6)}.{os.getpid()}"
    os.environ["SELFEVOLVE_OPENAI_API_KEY"] = ctx.canary  # what the parent's environment may leak
    escapes = {
        "read /etc/passwd": "data = open('/etc/passwd').read()\nassert 'root:' in data",
        "write outside its temp dir": f"open({str(outside)!r}, 'w').write('x')\nassert True",
        "connect to the broker port": f"import socket\nsocket.create_connection(('127.0.0.1', {broker_port}), 2)"
                                      "\nassert True",
        "fork 100 processes": "import os\npids = []\nfor _ in range(100):\n    pid = os.fork()\n    if pid == 0:\n"
                              "        os._exit(0)\n    pids.append(pid)\nfor p in pids:\n    os.waitpid(p, 0)\n"
                              "assert len(pids) == 100",
        "read the parent's environment": f"import os\nfound = {ctx.canary!r} in str(dict(os.environ))\ntry:\n"
                                         f"    found = found or {ctx.canary!r} in open('/proc/%d/environ' % "
                                         "os.getppid(), errors='replace').read()\nexcept OSError:\n    pass\n"
                                         "assert found",
        "leave a grandchild running": f"import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                      f"        os.execv('/usr/bin/sleep', ['sleep', '{tag}'])\n    os._exit(0)\n"
                                      "assert True",
    }
    out = []
    try:
        for name, code in escapes.items():
            check = checkers.run_code(f"```python\n{code}\n```")
            won = check.ran
            if name.startswith("write"):
                won = outside.exists()
            if name.startswith("leave"):
                time.sleep(0.5)
                left = _pids_with_arg(tag)
                won = bool(left)
                for pid in left:  # ours: the bench's own sandboxed child
                    os.kill(pid, 9)
            out.append(Result(f"sandbox escape: {name}", "checkers.run_code", "succeeded" if won else "refused",
                              f"ran={check.ran} error={check.error[:200]!r}"))
    finally:
        os.environ.pop("SELFEVOLVE_OPENAI_API_KEY", None)
    return out


def _pids_with_arg(arg: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and arg.encode() in (p / "cmdline").read_bytes().split(b"\0"):
                found.append(int(p.name))
        except OSError:
            continue
    return found


# ---- SQL and secrets ----------------------------------------------------------------------------------------------

def sql_attacks(ctx: Ctx) -> list[Result]:
    import httpx

    from streams.sqlclient import sql

    written = ctx.scratch / "sql-wrote-here.csv"
    if not _endpoint_up(f"http://127.0.0.1:{ctx.admin.sql_port}/health", wait_s=90):
        return [Result(name, "SQL endpoint", "error", "the SQL endpoint never answered /health: not measured")
                for name in ("SQL: file('/etc/passwd')", "SQL: INSERT INTO FUNCTION file", "SQL: url()",
                             "SQL: SET readonly=0", "SQL: no token")]
    statements = {
        "SQL: file('/etc/passwd')": "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SQL: INSERT INTO FUNCTION file": f"INSERT INTO FUNCTION file('{written}', 'CSV', 'x String') VALUES ('x')",
        "SQL: url()": "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        "SQL: SET readonly=0": "SET readonly = 0",
    }
    out = []
    for name, stmt in statements.items():
        try:
            _, rows = sql(ctx.admin, stmt)
            won, detail = True, f"ran: {str(rows)[:150]}"
        except Exception as e:  # noqa: BLE001 - a refusal is any error the endpoint gives back
            won, detail = False, f"{type(e).__name__}: {e}"[:300]
        if "INSERT" in stmt:
            won = won or written.exists()
        out.append(Result(name, "SQL endpoint", "succeeded" if won else "refused", detail))
    try:
        r = httpx.post(f"http://127.0.0.1:{ctx.admin.sql_port}/sql", content="SELECT 1", timeout=10)
        won, detail = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:150]}"
    except httpx.HTTPError as e:
        won, detail = False, f"{type(e).__name__}: {e}"
    out.append(Result("SQL: no token", "SQL endpoint", "succeeded" if won else "refused", detail))
    return out


def _endpoint_up(url: str, wait_s: float) -> bool:
    import httpx

    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def secret_attacks(ctx: Ctx, worker_pids: dict[str, int | None]) -> list[Result]:
    """The key must not print in repr(Settings), nor sit in any worker's environment."""
    s = Settings(openai_api_key=ctx.canary)
    shown = ctx.canary in repr(s) or ctx.canary in str(s)
    leaked = []
    for name, pid in worker_pids.items():
        try:
            if pid and ctx.canary.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                leaked.append(name)
        except OSError:
            continue
    compose = Path(__file__).resolve().parent.parent / "docker-compose.yml"
    literal = [line.strip() for line in (compose.read_text().splitlines() if compose.exists() else [])
               if re.search(r"password\s*[:=]\s*[\"']?(?!\$|%s)[\w\-]{3,}", line, re.I)
               and not line.lstrip().startswith("#")]  # a value, not ${VAR} or a printf slot
    return [Result("secrets: docker-compose.yml hard-codes a password", "docker-compose.yml",
                   "succeeded" if literal else "refused", f"literal password lines: {literal[:3] or 'none'}"),
            Result("secrets: repr(Settings) shows the OpenAI key", "selfevolve.config.Settings",
                   "succeeded" if shown else "refused",
                   f"the key is {'shown' if shown else 'masked'} in repr() and str()"),
            Result("secrets: a worker's environment holds the OpenAI key", "selfevolve up workers",
                   "succeeded" if leaked else "refused",
                   f"workers checked: {sorted(worker_pids)}; with the key: {leaked or 'none'}")]
