"""GET /dashboard against a real chdb history store read through its SQL endpoint, rendered in headless Chromium
(Debian's package, `make chromium`); the screenshot is kept under .run/test-artifacts/ and named in the output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SELFEVOLVE_TEST_ARTIFACTS", ROOT / ".run" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root, without the sandbox; no background connections (this machine reaches no outside host).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture
def dashboard(tmp_path):
    port, = free_ports(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dashboard_app.py")), str(tmp_path),
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _data(base: str) -> dict:
    r = httpx.get(f"{base}/dashboard/data", timeout=60)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    return r.json()


def test_the_page_shows_the_history_and_follows_it_live(dashboard, tmp_path):
    page = httpx.get(f"{dashboard}/dashboard", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    first = _data(dashboard)
    assert first["error"] is None, first["error"]
    t = first["totals"]
    assert t["answers"] >= 90 and 0 < t["cost_usd"] < t["supervisor_only_usd"]
    assert first["supervisor"]["model"] == "gpt-4-1106-preview"
    assert 0 < t["saved_ratio"] < 1 and t["feedback"] == 30 and 0.5 < t["mean_quality"] < 0.9
    assert {r["strategy"] for r in first["strategy"]} == {"direct", "cascade", "parallel", "cached"}
    assert {(r["domain"], r["model"]) for r in first["win_rates"]} >= {(0, "gpt-4-1106-preview")}
    assert [e["kind"] for e in first["events"]] == ["spawn", "promote"]
    time.sleep(2.5)  # answers keep arriving; the data is read again once the 1 s refresh has passed
    assert _data(dashboard)["totals"]["answers"] > t["answers"]

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make chromium): the page was not rendered")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    browse = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1100",
              "--virtual-time-budget=15000"]
    dom = subprocess.run([*browse, "--dump-dom", f"{dashboard}/dashboard"], capture_output=True, text=True,
                         timeout=120).stdout
    # The script ran, fetched the data and drew it: KPIs, the two cost lines, the tables.
    assert "supervisor-only (gpt-4-1106-preview)" in dom and "updated " in dom, dom[-2000:]
    assert dom.count("<path") >= 3 and "promote" in dom and "win rate" in dom
    subprocess.run([*browse, f"--screenshot={shot}", f"{dashboard}/dashboard"], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    print(f"\ndashboard screenshot: {shot}")
