"""Similarity routing core. The stream wires it as follows (all pure, no Kafka):

    from selfevolve.routing import Router, RouteQuery, Decision
    router = Router(settings, catalogue, history, embedder)          # Embedder(settings), History()
    d = router.route(RouteQuery(query_id, text, tenant))             # or vector=precomputed embedding
    router = router.with_thresholds(h, l) / .with_lambda(x) / .with_catalogue(cat)   # runtime updates

    from selfevolve.scoring import arbiter
    state, out = arbiter.start(d, settings.score_weights)            # out: [arbiter.Call, ...]
    state, out = arbiter.step(state, arbiter.Response(qid, model, answer, ok, cost, stage))
    # out holds more Calls (cascade escalation, or a fallback when ok=False) or, last, one arbiter.Verdict

    from selfevolve.routing import learning
    learning.record_delivery(history, vector, verdict, tenant)       # after the answer is delivered
    learning.apply_feedback(history, learning.Feedback(qid, model, quality))  # bandit rule; False = ignored
    history.save(dir); History.load(dir)                             # the quality predictor travels with it

    Estimates: each model's quality on a query is a Beta posterior whose prior is history.predictor's
    (an online ridge regression of the model's verdicts on the embedding, routing/predictor.py) and whose
    counts are the k nearest past queries' verdicts. Plans (routing/plans.py): a model alone, a cheap model
    weak-first, or two cheap voters on a choice question, escalating to the strong model when the arbiter's
    confidence is under q̂(strong) - λ·price(strong)/ref: λ sets that bar, on any pool size. A lone call to
    the strong model is shadowed by a cheap one (settings.router_shadow_ratio) while that model has few
    verdicts near the query: feedback comes only for models called, so this is how the router learns where
    the cheap model would do (what saves money on a two-model pool).

    from selfevolve.routing import target                            # quality target (settings.quality_target)
    state = target.TargetState(settings.quality_target, settings.cost_lambda)
    state = target.observe(state, target.Observation(system_q, predicted_sup_q, sup_q, audited, audit_usd))
    router = router.with_lambda(state.cost_lambda); target.report(state)   # audits: target.audit_due(key, rate)
    # In the stream: the meta-learner fold keeps one such state per target (everyone's, settings.quality_target,
    # and each tenant's own, settings.quality_targets) and sends λ and the audit rate (high until calibrated,
    # then settings.quality_audit_rate) on the strategy topic; the router calls the supervisor too on the
    # audited queries of tenants held to a target: router.with_tenant_lambdas(...).with_audit_rates(...).
"""

from selfevolve.routing.policy import HYBRID, PARALLEL, TARGETED, Decision, Router, RouteQuery

__all__ = ["Decision", "HYBRID", "PARALLEL", "RouteQuery", "Router", "TARGETED"]
