-- Example queries over the selfevolve history store (tables in infra/clickhouse/ddl.sql).
--
-- Each query starts with a `-- name: <name>` line, then `--` lines describing it, then the SQL,
-- ending with a semicolon; `selfevolve sql <name>` lists and runs them by that name. Tables are
-- ReplacingMergeTrees, so every read uses FINAL to count a re-delivered event once.
-- No semicolons or '--' inside literals: the file is split on them.

-- name: strategy_performance
-- Mean quality, cost and quality - cost (in cents) per routing strategy and domain. Quality is the
-- feedback verdict where one arrived, otherwise the scorer's composite (the meta-learner's input).
SELECT a.strategy AS strategy,
       a.domain AS domain,
       count() AS n,
       round(avg(if(f.query_id = '', a.composite, f.quality)), 4) AS quality,
       round(avg(a.cost_usd), 6) AS mean_cost_usd,
       round(avg(if(f.query_id = '', a.composite, f.quality)) - 100 * avg(a.cost_usd), 4) AS utility
FROM selfevolve.answers AS a FINAL
LEFT JOIN
(
    SELECT tenant, query_id, model, avg(quality) AS quality
    FROM selfevolve.feedback FINAL
    GROUP BY tenant, query_id, model
) AS f ON a.tenant = f.tenant AND a.query_id = f.query_id AND a.model = f.model
GROUP BY strategy, domain
ORDER BY domain, utility DESC;

-- name: model_win_rates_hourly
-- Per model and hour: responses scored, wins, win rate and mean scorer confidence.
SELECT toStartOfHour(ts) AS hour,
       model,
       count() AS n,
       countIf(winner) AS wins,
       round(countIf(winner) / count(), 4) AS win_rate,
       round(avg(confidence), 4) AS mean_confidence
FROM selfevolve.scores FINAL
GROUP BY hour, model
ORDER BY hour, win_rate DESC;

-- name: model_win_rates_by_domain
-- Win rate per (model, domain) over all time: the statistic the promotion rule reads.
SELECT model,
       domain,
       count() AS n,
       round(countIf(winner) / count(), 4) AS win_rate,
       round(avg(confidence), 4) AS mean_confidence,
       round(avg(composite), 4) AS mean_quality
FROM selfevolve.scores FINAL
GROUP BY model, domain
ORDER BY domain, win_rate DESC;

-- name: cost_by_tier_per_day
-- USD spent per day and price tier. The catalogue's tiers are not in the store, so a model's tier
-- here is the order of magnitude of its mean call cost (tier -4: 1e-4..1e-3 USD per call).
SELECT toDate(r.ts) AS day,
       t.tier AS tier,
       count() AS calls,
       round(sum(r.cost_usd), 6) AS cost_usd
FROM selfevolve.inference_responses AS r FINAL
INNER JOIN
(
    SELECT model, toInt32(floor(log10(greatest(avg(cost_usd), 1e-9)))) AS tier
    FROM selfevolve.inference_responses FINAL
    WHERE ok
    GROUP BY model
) AS t ON r.model = t.model
GROUP BY day, tier
ORDER BY day, tier;

-- name: cost_by_model_per_day
-- USD spent per day and model, from the real per-call costs on the responses.
SELECT toDate(ts) AS day,
       model,
       count() AS calls,
       countIf(NOT ok) AS failed,
       round(sum(cost_usd), 6) AS cost_usd
FROM selfevolve.inference_responses FINAL
GROUP BY day, model
ORDER BY day, cost_usd DESC;

-- name: promotions_timeline
-- Every change to the hierarchy in order: promotions, demotions, activations from the reserve.
SELECT ts,
       kind,
       model,
       domain,
       old_role,
       new_role,
       reason
FROM selfevolve.model_events FINAL
ORDER BY ts_ms, model;

-- name: promotions_per_day
-- Hierarchy changes per day and kind.
SELECT toDate(ts) AS day, kind, count() AS events
FROM selfevolve.model_events FINAL
GROUP BY day, kind
ORDER BY day, kind;

-- name: gaps
-- Every gap opened or closed, with the windowed confidence, failure rate and priority it carried.
SELECT ts, domain, kind, round(mean_confidence, 4) AS mean_confidence,
       round(failure_rate, 4) AS failure_rate, traffic, round(priority, 4) AS priority
FROM selfevolve.gaps FINAL
ORDER BY ts_ms, domain;

-- name: gaps_per_domain
-- Gaps opened and closed per domain, and whether one is still open (more opens than closes).
SELECT domain,
       countIf(kind = 'open') AS opened,
       countIf(kind = 'close') AS closed,
       opened > closed AS open_now
FROM selfevolve.gaps FINAL
GROUP BY domain
ORDER BY domain;

-- name: spawns
-- Spawn commands in order, with the teacher chosen for each new student.
SELECT ts, domain, mode, teacher, round(priority, 4) AS priority
FROM selfevolve.spawns FINAL
ORDER BY ts_ms, domain;

-- name: threshold_changes
-- The meta-learner's θh/θl over time, with the scores that moved them.
SELECT ts, domain, theta_high, theta_low, reason
FROM selfevolve.strategies FINAL
ORDER BY ts_ms, domain;

-- name: dead_letters_by_reason
-- Events that could not be processed, per source topic, error type and reason.
SELECT source_topic, error_type, reason, count() AS events, max(ts) AS last_seen
FROM selfevolve.dead_letters FINAL
GROUP BY source_topic, error_type, reason
ORDER BY events DESC;
