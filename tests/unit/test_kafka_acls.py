"""The ACLs of each role cover every consumer group and transactional id its code uses, and nothing of the others'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.kafka.security import (
    GROUP, PREFIXED, TOPIC, TRANSACTIONAL_ID, WRITE, role_acls, tenant_acls,
)
from selfevolve.config import Settings
from streams.app import ROLES
from streams.kafka_io import group_id

ROOT = Path(__file__).resolve().parents[2]
S = Settings(topic_prefix="p.")
LOOP = re.compile(r"(?:transactional_loop|committing_consumer)\(\s*[\w.]+,\s*\"([\w-]+)\"")


def _loops_of(role: str) -> set[str]:
    """Names of the hand-committing loops (their group and transactional id) in the modules of a role."""
    names = set()
    for module in ROLES[role]:
        names |= set(LOOP.findall((ROOT / (module.replace(".", "/") + ".py")).read_text()))
    return names


def _names(acls, resource: int, op: int | None = None) -> set[str]:
    return {a.name for a in acls if a.resource == resource and (op is None or a.operation == op)}


@pytest.mark.parametrize("role", ["serve", "history"])
def test_every_loop_of_a_role_has_its_group(role: str) -> None:
    loops = _loops_of(role)
    assert loops, f"no loops found in {ROLES[role]}: the pattern is stale"
    groups = _names(role_acls(S, role), GROUP)
    assert {group_id(S, n) for n in loops} <= groups


def test_transactional_loops_of_the_serve_role_have_their_ids() -> None:
    txn = _names(role_acls(S, "serve"), TRANSACTIONAL_ID)
    for name in ("router", "scorer", "feedback"):
        assert group_id(S, name) in txn


def test_roles_do_not_share_groups() -> None:
    serve, history, model = (_names(role_acls(S, r), GROUP) for r in ("serve", "history", "model"))
    assert not serve & history and not serve & model and not history & model


def test_only_history_writes_evolution_and_only_serve_writes_answers() -> None:
    writes = {r: _names(role_acls(S, r), TOPIC, WRITE) for r in ("serve", "history", "model")}
    assert "p.strategy" in writes["history"] and all("p.strategy" not in writes[r] for r in ("serve", "model"))
    assert "p.answers" in writes["serve"] and all("p.answers" not in writes[r] for r in ("history", "model"))
    assert "p.inference-responses" in writes["model"] and "p.inference-responses" not in writes["serve"]
    # No role writes the tenants' input topics (shared or per tenant): those are the tenants' own.
    for acls in (role_acls(S, r) for r in ("serve", "history", "model")):
        for a in acls:
            if a.resource == TOPIC and a.operation == WRITE:
                assert not a.name.startswith(("p.queries", "p.feedback")), a


def test_a_tenant_gets_three_literal_topics_and_nothing_else() -> None:
    acls = tenant_acls(S, "acme")
    assert {a.name for a in acls} == {"p.queries.acme", "p.feedback.acme", "p.answers.acme"}
    assert all(a.resource == TOPIC and a.pattern != PREFIXED for a in acls)
    assert _names(acls, TOPIC, WRITE) == {"p.queries.acme", "p.feedback.acme"}
