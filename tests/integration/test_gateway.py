"""The gateway with the real `openai` client, on the real broker and stack (replay backend): routed and pinned
answers, streaming, 401/404/429/504 bodies, feedback on its own and another tenant's answer, idempotent retries."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from infra.kafka.security import ADMIN_USER, add_tenant, provision
from infra.ports import free_ports
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.models.catalogue import Catalogue
from streams.demo import wait_ready
from streams.gateway import background
from streams.gateway_keys import create_key
from streams.stack import Stack

pytestmark = pytest.mark.slow
PROMPTS = [s.prompt for s in load_dir(Settings().replay_dir).samples]


@pytest.fixture(scope="module")
def env(kafka_broker, tmp_path_factory):
    """One stack for the module (a stack start is the expensive part), two tenants with keys, and a gateway
    signed in as the `gateway` principal (its ACLs: tenants' queries and feedback, their answers)."""
    web, history_web, sql_port, gw_port, stack_gw_port = free_ports(5)
    settings = Settings(kafka_bootstrap=kafka_broker.bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
                        home=tmp_path_factory.mktemp("gwhome"), kafka_security=kafka_broker.security,
                        kafka_username=ADMIN_USER, kafka_password=kafka_broker.admin_password(),
                        kafka_ca_file=kafka_broker.ca_file, web_port=web, history_web_port=history_web,
                        sql_port=sql_port, sink_flush_seconds=0.5, gateway_port=gw_port, gateway_timeout_s=120.0)
    for tenant in ("acme", "beta"):
        add_tenant(settings, tenant)
    keys = {"acme": create_key(settings, "acme")[0], "beta": create_key(settings, "beta")[0],
            "broke": create_key(settings, "acme", budget_usd_day=1e-12)[0],
            "slow": create_key(settings, "acme", rate_per_min=1)[0]}
    # `selfevolve up` starts a gateway of its own: on another port than the one this test signs in.
    stack = Stack(settings.model_copy(update={"gateway_port": stack_gw_port}))
    stack.up(with_broker=False)
    try:
        wait_ready(settings, timeout=300)
        password = provision(settings, ("gateway",))["gateway"]
        settings = settings.model_copy(update={"kafka_username": "gateway", "kafka_password": password})
        with background(settings) as url:
            yield settings, url, keys
    finally:
        stack.down(with_broker=False)


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=180)


def _ask(client: openai.OpenAI, prompt: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model=kw.pop("model", "selfevolve/auto"), messages=[{"role": "user", "content": prompt}], **kw)


def test_routed_answer_with_usage_and_headers(env):
    _, url, keys = env
    raw = _ask(_client(url, keys["acme"]), PROMPTS[0])
    out = raw.parse()
    assert out.object == "chat.completion" and out.choices[0].message.content
    assert out.model == raw.headers["x-selfevolve-model"] and raw.headers["x-selfevolve-strategy"]
    assert float(raw.headers["x-selfevolve-cost-usd"]) >= 0 and out.usage.total_tokens > 0
    models = [m.id for m in _client(url, keys["acme"]).models.list()]
    assert models[0] == "selfevolve/auto" and out.model in models


def test_pinned_model_answers_through_the_topics(env):
    settings, url, keys = env
    model = next(s.name for s in Catalogue.load(settings.catalogue).models if not s.reserve)
    raw = _ask(_client(url, keys["acme"]), PROMPTS[1], model=model)
    assert raw.parse().model == model and raw.headers["x-selfevolve-strategy"] == "pinned"


def test_streaming_returns_openai_chunks(env):
    _, url, keys = env
    stream = _client(url, keys["acme"]).chat.completions.create(
        model="selfevolve/auto", messages=[{"role": "user", "content": PROMPTS[2]}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.total_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_errors_are_openai_shaped(env):
    _, url, keys = env
    with pytest.raises(openai.AuthenticationError) as e:
        _ask(_client(url, "sk-se-" + "x" * 43), PROMPTS[0])
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        _ask(_client(url, keys["acme"]), PROMPTS[0], model="gpt-9")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        _client(url, keys["acme"]).chat.completions.create(model="selfevolve/auto", messages=[])
    r = httpx.post(f"{url}/chat/completions", content=b"{" * 10, timeout=30,
                   headers={"authorization": f"Bearer {keys['acme']}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/chat/completions", content=b" " * (300 * 1024), timeout=30,
                   headers={"authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 413 and "error" in r.json() and "Traceback" not in r.text


def test_over_budget_and_over_rate_are_429(env):
    _, url, keys = env
    _ask(_client(url, keys["broke"]), PROMPTS[3])  # spends more than the budget: the next is refused
    with pytest.raises(openai.RateLimitError) as e:
        _ask(_client(url, keys["broke"]), PROMPTS[4])
    assert e.value.code == "insufficient_quota"
    _ask(_client(url, keys["slow"]), PROMPTS[5])
    with pytest.raises(openai.RateLimitError) as e:
        _ask(_client(url, keys["slow"]), PROMPTS[6])
    assert e.value.code == "rate_limit_exceeded"


def test_feedback_on_its_own_answer_only(env):
    _, url, keys = env
    out = _ask(_client(url, keys["acme"]), PROMPTS[7]).parse()
    r = httpx.post(f"{url}/feedback", json={"id": out.id, "quality": 1}, timeout=30,
                   headers={"authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 200 and r.json()["status"] == "accepted" and r.json()["model"] == out.model
    r = httpx.post(f"{url}/feedback", json={"id": out.id, "quality": 0}, timeout=30,
                   headers={"authorization": f"Bearer {keys['beta']}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "answer_not_found"


def test_a_retry_gets_the_same_answer_from_another_gateway(env):
    """A gateway that gave up (504, as one killed mid-request) loses nothing: the retry with the same
    Idempotency-Key, on a gateway started later, gets the first try's answer, and the query ran once."""
    settings, url, keys = env
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    (port,) = free_ports(1)
    impatient = settings.model_copy(update={"gateway_port": port, "gateway_timeout_s": 0.001})
    with background(impatient) as url1:
        with pytest.raises(openai.APIStatusError) as e:
            _ask(_client(url1, keys["acme"]), PROMPTS[8], extra_headers=idem)
    assert e.value.status_code == 504 and e.value.code == "timeout"
    first = _ask(_client(url, keys["acme"]), PROMPTS[8], extra_headers=idem).parse()
    (port,) = free_ports(1)
    with background(settings.model_copy(update={"gateway_port": port})) as url2:  # reads the answer back
        again = _ask(_client(url2, keys["acme"]), PROMPTS[8], extra_headers=idem).parse()
    assert (again.id, again.choices[0].message.content) == (first.id, first.choices[0].message.content)


def test_a_gateway_started_before_any_key_answers_a_key_made_later(env, tmp_path):
    """A gateway whose key file was empty at start reads no answers topic yet: the first key's tenant must be
    followed once the key appears (its reader once died polling with nothing assigned: every request 504)."""
    settings, _, _ = env
    (port,) = free_ports(1)
    fresh = settings.model_copy(update={"home": tmp_path, "gateway_port": port, "gateway_timeout_s": 60.0})
    with background(fresh) as url:
        time.sleep(1)  # the reader polls with nothing assigned for a while
        key = create_key(fresh, "beta")[0]
        out = _ask(_client(url, key), PROMPTS[9]).parse()
    assert out.object == "chat.completion" and out.choices[0].message.content

