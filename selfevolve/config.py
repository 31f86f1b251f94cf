"""Settings: the only code that reads the environment (prefix SELFEVOLVE_)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# The broker's message.max.bytes (Kafka's own default, rounded to 1 MiB) and every producer's
# max_request_size: a record the producer accepts is one the broker accepts.
KAFKA_MESSAGE_MAX_BYTES = 1024 * 1024


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every tunable of the system. Frozen; build one and pass it down."""

    model_config = SettingsConfigDict(env_prefix="SELFEVOLVE_", frozen=True, extra="ignore")

    # Where things live on disk.
    home: Path = Field(default_factory=lambda: _project_root() / ".run")
    cache_dir: Path = Field(default_factory=lambda: _project_root() / ".cache")
    data_dir: Path = Field(default_factory=lambda: _project_root().parent / "shared" / "data")
    catalogue: Path = Field(default_factory=lambda: Path(__file__).resolve().parent / "data" / "catalogue.yaml")
    # RouterBench-format CSVs the replay backend serves recorded answers from.
    replay_dir: Path = Field(default_factory=lambda: Path(__file__).resolve().parent / "data" / "demo")

    # Kafka.
    kafka_bootstrap: str = "localhost:19092"
    # "none": PLAINTEXT, no ACLs (the demo). "sasl": SASL/SCRAM-SHA-512 and the broker's ACLs per role;
    # "sasl_ssl": the same over TLS, trusting kafka_ca_file. Each process has its own principal: username
    # and password come from its secrets folder (secrets_dir), never from a child's environment.
    kafka_security: Literal["none", "sasl", "sasl_ssl"] = "none"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_ca_file: Path | None = None
    # A folder of 0600 files named like the variables (selfevolve_kafka_password, ...), read by load().
    # Its path is no secret; what it holds is.
    secrets_dir: Path | None = None
    topic_prefix: str = "selfevolve."
    topic_partitions: int = 4
    # How often a pattern subscription (queries.<T>, feedback.<T>) looks for new tenants' topics.
    tenant_topic_refresh_ms: int = 10_000
    max_query_bytes: int = 32 * 1024
    # A query record's encoded (and decompressed) size limit at the edge: produce refuses, the router
    # dead-letters. Leaves room under the broker's limit for the decision, which carries the text twice.
    max_record_bytes: int = 256 * 1024
    kafka_max_message_bytes: int = KAFKA_MESSAGE_MAX_BYTES
    # Bytes of a failed record a dead letter keeps (with the full length and SHA-256), so it always fits.
    dead_letter_payload_bytes: int = 4096
    # Exact-text LRU of query embeddings (0 turns it off); ~1.6 KB per entry.
    embed_cache_size: int = 50_000
    # Query embedder (selfevolve/routing/embed.py; bench/results/embeddings.json measures both): "static", a
    # model2vec table distilled locally from the bundled MiniLM by `make embeddings` (no torch at run time),
    # or "minilm" through torch. Both read a text's last embed_max_tokens word pieces (the question comes last).
    embedder: Literal["static", "minilm"] = "static"
    embed_max_tokens: int = Field(default=128, ge=1)
    embed_static_dims: int = Field(default=256, ge=1, le=384)  # leading PCA components the static model keeps
    # Records one poll may hand the router and the scorer: each batch waits once for the broker's acks.
    router_batch_size: int = 128
    scorer_batch_size: int = 500
    code_check_workers: int = 4  # answers' code the scorer runs at once (subprocesses that mostly wait)
    # Limits of the sandbox (selfevolve/scoring/sandbox.py) an answer's code runs in: wall time, address space,
    # processes of the sandbox user, size of any file it writes (its stderr included).
    code_check_timeout_s: float = 3.0
    code_check_memory_mb: int = 512
    code_check_max_procs: int = 8
    code_check_file_mb: int = 8
    code_check_open_files: int = 64  # file descriptors per sandboxed process
    scorer_done_keep: int = 200_000  # answered-query markers the scorer keeps (memory and restore time)
    # Each stream worker role serves /ready (and the history role /stats) on its own port.
    web_port: int = 16066
    history_web_port: int = 16065
    # `selfevolve up`'s supervisor restarts a worker that dies after a delay doubling from backoff_s to
    # backoff_max_s; a worker up for stable_s counts as healthy again (the delay starts over).
    supervisor_backoff_s: float = 1.0
    supervisor_backoff_max_s: float = 60.0
    supervisor_stable_s: float = 60.0
    exactly_once: bool = False
    # Scale-out (README "Many serve workers"): `selfevolve up` starts serve_workers serve processes in one
    # consumer group; each is told its index here, which picks its snapshot folder (home/history/<index>)
    # and its web port (web_port + index). Serve workers on other machines may reuse indexes.
    serve_workers: int = Field(default=1, ge=1)
    serve_worker: int = Field(default=0, ge=0)
    # A serve worker snapshots its replica of the routing history (with the history topic's offset it
    # reflects) every this many history events, so a restart reads only the topic's tail.
    history_snapshot_every: int = Field(default=2000, ge=1)
    # Answer cache (selfevolve/routing/answer_cache.py): an exact repeat of a tenant's query (normalised
    # text) whose answer drew no verdict below answer_cache_min_quality is answered from it, at no model cost,
    # for answer_cache_ttl_s of event time; answer_cache_size entries per tenant (0 turns it off).
    answer_cache_size: int = Field(default=10_000, ge=0)
    answer_cache_ttl_s: float = Field(default=3600.0, gt=0)
    answer_cache_min_quality: float = 0.5

    # History store: chdb (embedded) unless a ClickHouse URL is given.
    clickhouse_url: str | None = None  # without a password: that goes in clickhouse_password
    clickhouse_password: SecretStr | None = None
    chdb_path: Path | None = None
    sink_batch_size: int = 500
    sql_port: int = 8124
    # User SQL (selfevolve/store/sqlguard.py, `selfevolve sql`): the endpoint's bearer token (when unset, one is
    # generated into <home>/secrets/sql_token, mode 0600) and the caps every user statement runs under.
    sql_token: SecretStr | None = None
    sql_max_rows: int = 10_000
    sql_max_bytes: int = 16 * 1024 * 1024
    sql_timeout_s: float = 15.0  # chdb runs one statement at a time: also the most a sink insert waits
    sql_max_memory_bytes: int = 512 * 1024 * 1024
    sql_max_threads: int = 2  # of the engine, per user query: the stream workers need the cores too
    sql_max_body_bytes: int = 64 * 1024
    sink_flush_seconds: float = 1.0

    # Gateway (streams/gateway.py, `selfevolve gateway`): the OpenAI-compatible HTTP edge. Keys live hashed
    # in <home>/secrets/gateway_keys.json; a key without its own budget or rate gets these defaults.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    gateway_timeout_s: float = Field(default=60.0, gt=0)  # waiting for the answer, then 504
    gateway_budget_usd_day: float = Field(default=10.0, ge=0)  # per key, per UTC day, from the answers topics
    gateway_rate_per_min: float = Field(default=600.0, gt=0)  # per key, per gateway (token bucket)
    gateway_max_body_bytes: int = 256 * 1024  # 413 above this
    # Answers kept in memory for idempotent retries (and read back on start): the last this many seconds.
    gateway_lookback_s: float = Field(default=86_400.0, gt=0)
    gateway_recent_answers: int = Field(default=100_000, ge=1)
    gateway_keys_file: Path | None = None  # None: <home>/secrets/gateway_keys.json (hashes only, 0600)

    # Routing.
    theta_high: float = 0.80
    theta_low: float = 0.50
    cost_lambda: float = 0.1  # cost counted as a fraction of the supervisor's price per call
    budget_per_query_usd: float | None = None
    knn_k: int = 20
    # Router knobs (selfevolve/routing/policy.py): pseudo-verdicts of each model's prior, the UCB bonus of a
    # thinly observed model, "cheap" = at most this fraction of the top model's price, models per parallel call.
    router_prior_strength: float = 20.0
    router_explore: float = 0.3
    router_cheap_ratio: float = 0.25
    router_max_parallel: int = 4
    # A plan calling the top model alone also calls the best model at most this fraction of its price while
    # that model has few verdicts near the query (its verdict teaches where it suffices); 0 turns it off.
    router_shadow_ratio: float = Field(default=0.1, ge=0.0)
    # "At least this fraction of the supervisor's quality, as cheaply as possible" (selfevolve/routing/target.py);
    # None: cost_lambda stays where it is set.
    quality_target: float | None = None
    # Per tenant, a target of its own (null: none, λ as set), overriding quality_target for that tenant; each
    # such tenant's quality is estimated, audited and met apart (SELFEVOLVE_QUALITY_TARGETS='{"acme": 0.97}').
    quality_targets: dict[str, float | None] = Field(default_factory=dict)
    # With a quality target, this fraction of queries (fixed by a hash of tenant/query id) also calls the
    # supervisor, whose verdict measures the quality the target is relative to; those calls are paid.
    quality_audit_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    # Until a target's first quality_audit_calibration audits are in, it audits at quality_audit_start_rate
    # (at least quality_audit_rate): a few dozen audits are too noisy a measure of the supervisor. 200 audits
    # put the supervisor's mean within a standard error of about 0.025 (accuracy near 0.85), half the gap
    # between a 0.95 target and parity; with 58 audits GSM8K's target run met 0.82 believing 0.97.
    quality_audit_start_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    quality_audit_calibration: int = Field(default=200, ge=0)
    score_weights: tuple[float, float, float, float] = (0.2, 0.5, 0.15, 0.15)

    # Backends.
    backend_timeout_s: float = 30.0
    backend_retries: int = 2
    backend_backoff_s: float = Field(default=0.5, ge=0)  # before retry k (1, 2, ...): backend_backoff_s * 2**(k-1)
    openai_base_url: str = "http://localhost:8000/v1"
    openai_api_key: SecretStr | None = None

    # Evolution.
    promote_min_n: int = 50
    promote_min_winrate: float = 0.70
    promote_min_confidence: float = 0.85
    gap_confidence: float = 0.5
    gap_failure_rate: float = 0.3
    window_size: int = 100
    domain_radius: float = 0.5
    max_domains: int = 8
    promote_gated: bool = False
    # The meta-learner counts answers, not seconds: every metalearn_every answers it scores each strategy over
    # the last metalearn_window answers and nudges θh/θl by metalearn_delta (a replay gives the same nudges).
    metalearn_every: int = Field(default=100, ge=1)
    metalearn_window: int = Field(default=300, ge=1)
    metalearn_delta: float = 0.02
    # Replay mode activates recorded reserve models; live mode trains SmolLM2 students instead.
    spawn_mode: str = "replay"
    spawn_backends: tuple[str, ...] = ("replay",)
    max_models_per_domain: int = 6

    # Distillation.
    distill_confidence: float = 0.8
    distill_buffer: int = 64
    distill_steps: int = 20
    distill_batch_size: int = 8
    # Prompts keep their tail (the question), answers their head; shorter is faster on the CPU.
    distill_max_prompt_tokens: int = 256
    distill_max_answer_tokens: int = 192

    # Metrics (streams/metrics.py): each process serves Prometheus text on http://metrics_host:<port>/metrics,
    # its port by role: serve worker i on metrics_serve_port + i, model worker i on metrics_model_port + i,
    # local worker i on metrics_local_port + i; the gateway serves /metrics on its own port. 0.0.0.0 in
    # containers (docker-compose), loopback otherwise. The history role polls consumer lag every interval.
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_serve_port: int = 16100
    metrics_history_port: int = 16099
    metrics_model_port: int = 16120
    metrics_local_port: int = 16140
    metrics_trainer_port: int = 16098
    metrics_lag_interval_s: float = Field(default=15.0, gt=0)
    # The gateway's live page (streams/dashboard.py): it reads the history store at most once per refresh (every
    # viewer polls that often) over the last window of event time before the newest answer.
    dashboard_refresh_s: float = Field(default=5.0, gt=0)
    dashboard_window_s: float = Field(default=6 * 3600.0, gt=0)

    @field_validator("clickhouse_url")
    @classmethod
    def _no_password_in_url(cls, url: str | None) -> str | None:
        if url and urlsplit(url).password is not None:
            raise ValueError("clickhouse_url must not carry a password: set SELFEVOLVE_CLICKHOUSE_PASSWORD "
                             "(or a secrets folder file) instead")
        return url

    @field_validator("quality_target")
    @classmethod
    def _target_range(cls, target: float | None) -> float | None:
        if target is not None and not 0.0 < target <= 1.5:
            raise ValueError(f"a quality target must be in (0, 1.5], got {target}")
        return target

    @field_validator("quality_targets")
    @classmethod
    def _targets_range(cls, targets: dict[str, float | None]) -> dict[str, float | None]:
        for tenant, target in targets.items():
            cls._target_range(target)
            if not tenant:
                raise ValueError("a per-tenant quality target needs a tenant name")
        return targets

    @property
    def audit_start_rate(self) -> float:
        """The audit rate of a target's calibration: the start rate, never below the base rate (0: off)."""
        return max(self.quality_audit_start_rate, self.quality_audit_rate) if self.quality_audit_rate > 0 else 0.0

    def target_for(self, tenant: str) -> float | None:
        """The quality target `tenant` is held to: its own if quality_targets names it, else quality_target."""
        return self.quality_targets[tenant] if tenant in self.quality_targets else self.quality_target

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Settings from the environment and, when secrets_dir names a folder, the secrets in it: what every
        process entry point builds."""
        first = cls(**overrides)
        if first.secrets_dir is None:
            return first
        if not first.secrets_dir.is_dir():
            from selfevolve.errors import ConfigError

            raise ConfigError(f"secrets folder {first.secrets_dir} does not exist")
        return cls(_secrets_dir=first.secrets_dir, **overrides)

    def to_env(self) -> dict[str, str]:
        """These settings as SELFEVOLVE_* variables, so child processes build the same Settings; never a
        secret (SecretStr) nor this process's identity (kafka_username, secrets_dir): each child reads its
        own from its own secrets folder."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None or isinstance(value, SecretStr) or name in ("kafka_username", "secrets_dir"):
                continue
            if isinstance(value, (tuple, list)):
                value = json.dumps(list(value))
            elif isinstance(value, dict):
                value = json.dumps(value)
            env[f"SELFEVOLVE_{name.upper()}"] = str(value)
        return env

    def topic(self, name: str) -> str:
        """Full topic name for a logical stage (queries, answers, ...)."""
        return f"{self.topic_prefix}{name}"

    @property
    def chdb_dir(self) -> Path:
        return self.chdb_path or (self.home / "chdb")


# The declared defaults, built without reading the environment (model_construct skips every settings
# source): where a pure function's parameter needs a default, it takes it from here, so each value is
# written once, above. A process builds Settings.load() and passes it down; hosts never use DEFAULTS.
DEFAULTS = Settings.model_construct()
