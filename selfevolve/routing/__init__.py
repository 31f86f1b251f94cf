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
    history.save(dir); History.load(dir)
"""

from selfevolve.routing.policy import HYBRID, PARALLEL, TARGETED, Decision, Router, RouteQuery

__all__ = ["Decision", "HYBRID", "PARALLEL", "RouteQuery", "Router", "TARGETED"]
