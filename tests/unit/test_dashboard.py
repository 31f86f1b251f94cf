"""The dashboard's routes without a store: the supervisor-only price, the error body, one read per refresh."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.ports import free_ports
from selfevolve.config import Settings
from selfevolve.errors import StoreError
from selfevolve.models.catalogue import Catalogue
from streams.dashboard import mount_dashboard, supervisor_price


def test_supervisor_only_is_priced_at_the_top_tiers_supervisor():
    assert supervisor_price(Catalogue.load(Settings().catalogue)) == ("gpt-4-1106-preview", 0.005038)


def test_an_unreachable_store_is_a_line_on_the_page_not_a_500(tmp_path):
    port, = free_ports(1)  # nothing listens there: the history role is down
    app = FastAPI()
    mount_dashboard(app, Settings(home=tmp_path, sql_port=port))
    with TestClient(app) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and "/data" in page.text and "<script>" in page.text
        body = client.get("/dashboard/data").json()
    assert body["error"].startswith("history store unavailable") and body["refresh_s"] > 0


def test_viewers_share_one_read_per_refresh_interval(tmp_path):
    calls = []

    def query(sql: str):
        calls.append(sql)
        raise StoreError("down")

    app = FastAPI()
    mount_dashboard(app, Settings(home=tmp_path, dashboard_refresh_s=3600), query=query)
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get("/dashboard/data").status_code == 200
    assert len(calls) == 1
