-- selfevolve history store: one table per event kind, run as-is by chdb and by a ClickHouse server.
--
-- Columns are named exactly like the Avro fields in schemas/*.avsc (map -> Map(String, String),
-- array<string> -> Array(String), bytes -> String, ["null","string"] -> Nullable(String),
-- long ts_ms -> Int64). `ts` is MATERIALIZED from ts_ms so time SQL (toStartOfHour(ts), ...) needs
-- no conversion; it is not part of SELECT * and is never inserted.
--
-- The sink commits Kafka offsets only after a flush, so a crash re-delivers events that may already
-- be stored. Every table is a ReplacingMergeTree whose ORDER BY key identifies one event, so
-- duplicates collapse at merge time. Merges are lazy: analytic SQL must read with FINAL
-- (SELECT ... FROM answers FINAL) to count each event once.
--
-- A query is (tenant, query_id): two tenants may use the same id, so every table keyed by a query id has
-- tenant first in its ORDER BY (issue #12). A tenant reusing one of its own ids gets a dead letter, yet
-- its second query and decision still reach these tables: queries and route_decisions keep the earliest
-- row per key (version first_seen, larger for an earlier ts_ms), so the stored query is the one that was
-- answered; a re-delivery is the same row.
--
-- CREATE TABLE IF NOT EXISTS never changes an existing table: streams/store_migrate.py moves a table whose
-- ORDER BY or columns differ from this file into a new one (rows kept) before these statements run.
--
-- streams/store.py strips '--' comments, then splits statements on semicolons: keep both out of literals.

CREATE DATABASE IF NOT EXISTS selfevolve;

CREATE TABLE IF NOT EXISTS selfevolve.queries
(
    version Int32 DEFAULT 1,
    query_id String,
    text String,
    tenant String DEFAULT 'default',
    metadata Map(String, String),
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC'),
    first_seen UInt64 MATERIALIZED toUInt64(9223372036854775807 - ts_ms)
)
ENGINE = ReplacingMergeTree(first_seen)
ORDER BY (tenant, query_id);

CREATE TABLE IF NOT EXISTS selfevolve.route_decisions
(
    version Int32 DEFAULT 4,
    query_id String,
    tenant String,
    strategy String,
    similarity Float64,
    models Array(String),
    domain Int32 DEFAULT -1,
    theta_high Float64,
    theta_low Float64,
    decision_ms Float64,
    metadata Map(String, String) DEFAULT map(),
    plan String DEFAULT '',
    source String DEFAULT '',
    vector Nullable(String),
    cached_from String DEFAULT '',
    cached_answer String DEFAULT '',
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC'),
    first_seen UInt64 MATERIALIZED toUInt64(9223372036854775807 - ts_ms)
)
ENGINE = ReplacingMergeTree(first_seen)
ORDER BY (tenant, query_id);

CREATE TABLE IF NOT EXISTS selfevolve.inference_requests
(
    version Int32 DEFAULT 1,
    request_id String,
    query_id String,
    tenant String,
    model String,
    text String,
    strategy String,
    stage Int32 DEFAULT 0,
    attempt Int32 DEFAULT 0,
    fallback_from Nullable(String),
    metadata Map(String, String),
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, request_id);

CREATE TABLE IF NOT EXISTS selfevolve.inference_responses
(
    version Int32 DEFAULT 1,
    request_id String,
    query_id String,
    tenant String,
    model String,
    answer String,
    confidence Float64,
    latency_ms Float64,
    prompt_tokens Int32,
    completion_tokens Int32,
    cost_usd Float64,
    ok Bool,
    error Nullable(String),
    fallback_from Nullable(String),
    stage Int32 DEFAULT 0,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, request_id);

CREATE TABLE IF NOT EXISTS selfevolve.scores
(
    version Int32 DEFAULT 3,
    query_id String,
    tenant String DEFAULT 'default',
    model String,
    relevance Float64,
    correctness Float64,
    completeness Float64,
    clarity Float64,
    composite Float64,
    confidence Float64,
    winner Bool,
    domain Int32 DEFAULT -1,
    cost_usd Float64 DEFAULT 0,
    contested Bool DEFAULT false,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, query_id, model);

CREATE TABLE IF NOT EXISTS selfevolve.answers
(
    version Int32 DEFAULT 1,
    query_id String,
    tenant String,
    model String,
    answer String,
    composite Float64,
    cost_usd Float64,
    strategy String,
    models_called Array(String),
    fallbacks Array(String),
    domain Int32 DEFAULT -1,
    latency_ms Float64,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, query_id);

-- One verdict per (tenant, query, model): a later verdict replaces an earlier one rather than adding to it.
CREATE TABLE IF NOT EXISTS selfevolve.feedback
(
    version Int32 DEFAULT 2,
    query_id String,
    model String,
    tenant String DEFAULT 'default',
    quality Float64,
    source String DEFAULT 'user',
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, query_id, model);

-- The routing history's change log, as every serve worker replicates it: deliveries and accepted verdicts,
-- in the one order of the history topic (see selfevolve/flow/learning.py).
CREATE TABLE IF NOT EXISTS selfevolve.history
(
    version Int32 DEFAULT 1,
    event String,
    query_id String,
    tenant String,
    ts_ms Int64,
    source String DEFAULT '',
    text String DEFAULT '',
    vector Nullable(String),
    winner Nullable(String),
    strategy String DEFAULT '',
    costs Map(String, Float64) DEFAULT map(),
    domain Int32 DEFAULT -1,
    answer String DEFAULT '',
    cached_from String DEFAULT '',
    model String DEFAULT '',
    quality Float64 DEFAULT 0,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, query_id, event, model);

-- partition and offset are keywords in ClickHouse SQL, hence the backquotes.
CREATE TABLE IF NOT EXISTS selfevolve.dead_letters
(
    version Int32 DEFAULT 1,
    source_topic String,
    `partition` Int32,
    `offset` Int64,
    reason String,
    error_type String,
    payload String,
    payload_len Int64 DEFAULT -1,
    payload_sha256 String DEFAULT '',
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, `partition`, `offset`);

-- v2 dead letters keep a prefix of the payload with its whole length and digest; a store made before
-- them gains the columns here (a no-op on a new one). -1 and '' mark v1 rows, whose payload is whole.
ALTER TABLE selfevolve.dead_letters ADD COLUMN IF NOT EXISTS payload_len Int64 DEFAULT -1 AFTER payload;
ALTER TABLE selfevolve.dead_letters ADD COLUMN IF NOT EXISTS payload_sha256 String DEFAULT '' AFTER payload_len;

-- The events below carry no id: the producer's ts_ms together with what changed identifies one.
CREATE TABLE IF NOT EXISTS selfevolve.model_events
(
    version Int32 DEFAULT 1,
    model String,
    kind String,
    domain Int32 DEFAULT -1,
    old_role Nullable(String),
    new_role Nullable(String),
    checkpoint Nullable(String),
    reason String DEFAULT '',
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (model, kind, ts_ms);

CREATE TABLE IF NOT EXISTS selfevolve.gaps
(
    version Int32 DEFAULT 1,
    domain Int32,
    kind String,
    mean_confidence Float64,
    failure_rate Float64,
    traffic Int64,
    priority Float64,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (domain, kind, ts_ms);

CREATE TABLE IF NOT EXISTS selfevolve.spawns
(
    version Int32 DEFAULT 1,
    domain Int32,
    teacher Nullable(String),
    mode String,
    priority Float64,
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (domain, mode, ts_ms);

CREATE TABLE IF NOT EXISTS selfevolve.strategies
(
    version Int32 DEFAULT 1,
    theta_high Float64,
    theta_low Float64,
    domain Int32 DEFAULT -1,
    reason String DEFAULT '',
    cost_lambda Nullable(Float64),
    audit_rate Nullable(Float64),
    tenant Nullable(String),
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (domain, ts_ms, ifNull(tenant, ''));
-- Strategy v2: the quality target's λ (null: unchanged); a store made before it gains the column.
ALTER TABLE selfevolve.strategies ADD COLUMN IF NOT EXISTS cost_lambda Nullable(Float64) AFTER reason;
-- Strategy v3: the audit rate, and the tenant whose own quality target set them (null: every other tenant).
-- The tenant is in the key, so that a tenant's event and everyone's made at the same millisecond are two rows
-- (a replacing merge keeps one row per key).
ALTER TABLE selfevolve.strategies ADD COLUMN IF NOT EXISTS audit_rate Nullable(Float64) AFTER cost_lambda,
    ADD COLUMN IF NOT EXISTS tenant Nullable(String) AFTER audit_rate, MODIFY ORDER BY (domain, ts_ms, ifNull(tenant, ''));
