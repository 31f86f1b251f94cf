"""Settings: the only code that reads the environment (prefix SELFEVOLVE_)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    topic_prefix: str = "selfevolve."
    topic_partitions: int = 4
    max_query_bytes: int = 32 * 1024
    # Exact-text LRU of query embeddings (0 turns it off); ~1.6 KB per entry.
    embed_cache_size: int = 50_000
    # Records one poll may hand the router and the scorer: each batch waits once for the broker's acks.
    router_batch_size: int = 128
    scorer_batch_size: int = 500
    code_check_workers: int = 4  # answers' code the scorer runs at once (subprocesses that mostly wait)
    scorer_done_keep: int = 200_000  # answered-query markers the scorer keeps (memory and restore time)
    # Each stream worker role serves /ready (and the history role /stats) on its own port.
    web_port: int = 16066
    history_web_port: int = 16067
    exactly_once: bool = False

    # History store: chdb (embedded) unless a ClickHouse URL is given.
    clickhouse_url: str | None = None
    chdb_path: Path | None = None
    sink_batch_size: int = 500
    sql_port: int = 8124
    sink_flush_seconds: float = 1.0

    # Routing.
    theta_high: float = 0.80
    theta_low: float = 0.50
    cost_lambda: float = 0.1  # cost counted as a fraction of the supervisor's price per call
    budget_per_query_usd: float | None = None
    knn_k: int = 20
    score_weights: tuple[float, float, float, float] = (0.2, 0.5, 0.15, 0.15)

    # Backends.
    backend_timeout_s: float = 30.0
    backend_retries: int = 2
    openai_base_url: str = "http://localhost:8000/v1"
    openai_api_key: str | None = None

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
    metalearn_interval_s: float = 30.0
    metalearn_delta: float = 0.02
    metalearn_horizon_s: float = 3600.0
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

    def to_env(self) -> dict[str, str]:
        """These settings as SELFEVOLVE_* variables, so child processes build the same Settings."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, (tuple, list)):
                value = json.dumps(list(value))
            env[f"SELFEVOLVE_{name.upper()}"] = str(value)
        return env

    def topic(self, name: str) -> str:
        """Full topic name for a logical stage (queries, answers, ...)."""
        return f"{self.topic_prefix}{name}"

    @property
    def chdb_dir(self) -> Path:
        return self.chdb_path or (self.home / "chdb")
