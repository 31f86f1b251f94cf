"""infra/prometheus and infra/grafana cannot run here (no Docker engine): check statically that the scrape config
names the ports Settings gives each process, and that every dashboard query names a metric streams/metrics.py
defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401 - defines the metrics in the registry
from selfevolve.config import Settings
from streams.metrics import metrics_port

ROOT = Path(__file__).resolve().parents[2]
SCRAPE = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "infra" / "grafana" / "selfevolve.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _targets() -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for job in SCRAPE["scrape_configs"]:
        found = set()
        for static in job.get("static_configs", []):
            for t in static["targets"]:
                host, _, port = t.rpartition(":")
                found.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found |= {(name, int(dns["port"])) for name in dns["names"]}
        out[job["job_name"]] = found
    return out


def test_the_scrape_config_names_the_ports_settings_gives_each_role():
    s = Settings()
    targets = _targets()
    assert targets["selfevolve-serve"] == {("serve", metrics_port(s, "serve", s.serve_worker))}
    assert targets["selfevolve-history"] == {("history", metrics_port(s, "history"))}
    assert targets["selfevolve-model"] == {("model-worker", metrics_port(s, "model", 0))}
    assert targets["selfevolve-gateway"] == {("gateway", s.gateway_port)}


def test_scraped_hosts_are_compose_services_that_bind_all_interfaces():
    services = set(COMPOSE["services"])
    for job, targets in _targets().items():
        for host, _ in targets:
            assert host in services, f"{job} scrapes {host}, which docker-compose.yml does not run"
    env = COMPOSE["x-selfevolve-env"]
    assert env["SELFEVOLVE_METRICS_HOST"] == "0.0.0.0"  # loopback inside a container is unreachable
    prom = COMPOSE["services"]["prometheus"]
    assert any(v.startswith("./infra/prometheus/prometheus.yml:") for v in prom["volumes"])


def _exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_names_a_defined_metric():
    defined = {f.name for f in REGISTRY.collect() if f.name.startswith("selfevolve_")}
    used = set()
    for expr in _exprs():
        names = re.findall(r"\bselfevolve_[a-z0-9_]+", expr)
        assert names, expr
        for name in names:
            base = name
            for suffix in SUFFIXES:  # a histogram's series and a counter's _total
                if base.endswith(suffix) and base[: -len(suffix)] in defined:
                    base = base[: -len(suffix)]
                    break
            assert base in defined, f"{name} in {expr!r} is not a metric of streams/metrics.py"
            used.add(base)
    # The list: queries, answers (strategy mix), dead letters, calls and cost per model, consumer lag,
    # latency per stage, evolution events.
    assert {"selfevolve_queries", "selfevolve_answers", "selfevolve_dead_letters", "selfevolve_model_calls",
            "selfevolve_model_cost_usd", "selfevolve_consumer_lag", "selfevolve_stage_seconds",
            "selfevolve_evolution_events"} <= used


def test_panels_use_the_provisioned_datasource_and_do_not_overlap():
    ds = yaml.safe_load((ROOT / "infra" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    cells = set()
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == uid
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine
    grafana = COMPOSE["services"]["grafana"]
    assert any(v.startswith("./infra/grafana/selfevolve.json:") for v in grafana["volumes"])
