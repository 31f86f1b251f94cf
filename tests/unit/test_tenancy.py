"""Tenant names, the canonical query key, per-tenant topics, and a history that tells tenants' ids apart."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.routing import learning
from selfevolve.errors import StoreError, ValidationError
from selfevolve.routing.history import History, Record
from selfevolve.wire.tenancy import TENANT_RE, check_tenant, query_key, record_key, split_key
from selfevolve.wire.topics import Topics

TOPICS = Topics("se.")
tenants = st.from_regex(TENANT_RE, fullmatch=True)


@pytest.mark.parametrize("name", ["acme", "a", "0", "team_1", "a-b", "x" * 64, "default"])
def test_valid_tenant_names(name):
    assert check_tenant(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "_acme", "a.b", "a/b", "a b", "x" * 65, "é", "a\n", None, 7])
def test_invalid_tenant_names_are_refused_with_the_rule(name):
    with pytest.raises(ValidationError, match="invalid tenant name"):
        check_tenant(name)


@given(tenant=tenants, query_id=st.text(min_size=1))
def test_the_canonical_key_round_trips_for_any_tenant_and_any_id(tenant, query_id):
    key = query_key(tenant, query_id)
    assert split_key(key) == (tenant, query_id)
    assert record_key({"tenant": tenant, "query_id": query_id}) == key


@given(a=tenants, b=tenants, query_id=st.text(min_size=1))
def test_two_tenants_same_id_have_different_keys(a, b, query_id):
    assert (query_key(a, query_id) == query_key(b, query_id)) == (a == b)


def test_a_key_without_a_tenant_is_refused():
    with pytest.raises(ValidationError):
        split_key("no-separator")
    with pytest.raises(ValidationError):
        split_key("Bad Tenant/q1")


@pytest.mark.parametrize("method, stage", [("queries_for", "queries"), ("feedback_for", "feedback"),
                                           ("answers_for", "answers")])
def test_per_tenant_topics_name_their_tenant(method, stage):
    topic = getattr(TOPICS, method)("acme")
    assert topic == f"se.{stage}.acme"
    assert TOPICS.tenant_of(topic) == "acme"
    assert TOPICS.kind_of(topic) == TOPICS.kind_of(f"se.{stage}")
    assert re.match(TOPICS.pattern(stage), topic) and re.match(TOPICS.pattern(stage), f"se.{stage}")
    with pytest.raises(ValidationError):
        getattr(TOPICS, method)("a.b")


@pytest.mark.parametrize("topic", ["se.queries", "se.feedback", "se.answers", "se.route-decisions",
                                   "se.inference-requests.replay", "se.scores.acme", "other.queries.acme",
                                   "se.queries.Acme", "se.queries.a.b", "se.queries."])
def test_shared_and_foreign_topics_have_no_tenant(topic):
    assert TOPICS.tenant_of(topic) is None


@pytest.mark.parametrize("topic", ["se.queries.a.b", "se.queriesx", "se.queries.Acme", "xse.queries",
                                   "se.feedback.acme", "se.queries.acme.x"])
def test_the_queries_pattern_matches_nothing_else(topic):
    assert not re.match(TOPICS.pattern("queries"), topic)


@given(tenant=tenants)
def test_tenant_of_inverts_the_per_tenant_names(tenant):
    assert [TOPICS.tenant_of(t) for t in TOPICS.tenant_topics(tenant)] == [tenant] * 3


def _verdict(qid: str):
    from selfevolve.scoring import arbiter

    return arbiter.Verdict(qid, "m1", "ans", 0.9, {}, ("m1",), (), 0.1, "targeted", 1, {"m1": 0.1})


def test_history_keeps_two_tenants_same_id_apart_and_feedback_reaches_only_the_owner(tmp_path):
    h = History()
    learning.record_delivery(h, np.ones(384, np.float32), _verdict("q1"), "a", source="s:0:1")
    learning.record_delivery(h, np.ones(384, np.float32), _verdict("q1"), "b", source="s:0:2")
    assert len(h) == 2 and h.get("q1", "a").source == "s:0:1" and h.get("q1", "b").source == "s:0:2"
    assert h.get("q1") is None  # the default tenant has no q1
    assert learning.apply_feedback(h, learning.Feedback("q1", "m1", 0.0, "b"))
    assert h.get("q1", "a").quality == {"m1": None} and h.get("q1", "b").quality == {"m1": 0.0}
    assert not learning.apply_feedback(h, learning.Feedback("q1", "m1", 1.0, "c"))
    h.save(tmp_path)
    again = History.load(tmp_path)
    assert again.get("q1", "b").quality == {"m1": 0.0} and again.get("q1", "a").source == "s:0:1"
    with pytest.raises(StoreError, match="tenant a"):
        h.add(np.ones(384, np.float32), Record("q1", tenant="a"))


def test_a_redone_delivery_keeps_the_first_record():
    h = History()
    first = learning.record_delivery(h, np.ones(384, np.float32), _verdict("q1"), "a", source="s:0:1")
    assert learning.record_delivery(h, np.ones(384, np.float32), _verdict("q1"), "a", source="s:0:1") is first
    assert len(h) == 1


@pytest.mark.parametrize("line, tenant, want", [
    ('{"id": "q1", "text": "hi"}', "acme", "acme"),                     # stamped with --tenant
    ('{"id": "q1", "text": "hi", "tenant": "acme"}', "acme", "acme"),
    ('{"id": "q1", "text": "hi", "tenant": "acme"}', None, "acme"),     # the shared topic: as it says
    ('{"id": "q1", "text": "hi"}', None, "default"),
])
def test_produce_stamps_the_tenant(line, tenant, want):
    from selfevolve.wire.codec import Codec
    from selfevolve.config import Settings
    from streams.produce import _query_record

    record, _ = _query_record(Settings(), Codec.from_dir(), line, tenant)
    assert record["tenant"] == want


@pytest.mark.parametrize("line, tenant, reason", [
    ('{"id": "q1", "text": "hi", "tenant": "other"}', "acme", "but --tenant is 'acme'"),
    ('{"id": "q1", "text": "hi", "tenant": "Bad Name"}', None, "invalid tenant name"),
])
def test_produce_refuses_a_line_of_another_or_an_invalid_tenant(line, tenant, reason):
    from selfevolve.wire.codec import Codec
    from selfevolve.config import Settings
    from streams.produce import _query_record

    with pytest.raises(ValidationError, match=re.escape(reason)):
        _query_record(Settings(), Codec.from_dir(), line, tenant)


@pytest.mark.parametrize("line, tenant, reason", [
    ('{"id": "q1", "model": "m", "quality": 1.5}', "acme", "from 0 to 1"),
    ('{"id": "q1", "model": "m", "quality": true}', "acme", "from 0 to 1"),
    ('{"id": "q1", "quality": 1}', "acme", "'id' and 'model'"),
    ('{"id": "q1", "model": "m", "quality": 1, "tenant": "b"}', "acme", "but --tenant is 'acme'"),
    ('[1]', None, "JSON object"),
    ('{', None, "not valid JSON"),
])
def test_feedback_lines_are_checked_at_the_edge(line, tenant, reason):
    from streams.produce import feedback_record

    with pytest.raises(ValidationError, match=re.escape(reason)):
        feedback_record(line, tenant, 1)


def test_a_feedback_line_becomes_the_tenants_record():
    from streams.produce import feedback_record

    assert feedback_record('{"id": "q1", "model": "m", "quality": 1}', "acme", 7) == {
        "query_id": "q1", "tenant": "acme", "model": "m", "quality": 1.0, "source": "user", "ts_ms": 7}
