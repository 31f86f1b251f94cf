"""Offline reference routers on RouterBench-format data: supervisor, best single, random, static, kNN, oracle."""

from __future__ import annotations

import numpy as np

from selfevolve.routing.linear import topk


def _score(samples, choose) -> tuple[float, float]:
    """(accuracy, USD) when choose(i, sample) names the one model called for each sample."""
    right, usd = 0.0, 0.0
    for i, s in enumerate(samples):
        m = choose(i, s)
        right += s.correct.get(m, 0.0)
        usd += s.costs.get(m, 0.0)
    return right / max(1, len(samples)), usd


def _best(samples, models, lam: float = 0.0, ref: float = 1.0) -> str:
    """Model with the highest mean accuracy (minus λ·cost/ref) on samples: a train-time choice."""
    def util(m):
        n = max(1, len(samples))
        return sum(s.correct.get(m, 0.0) for s in samples) / n - lam * sum(s.costs.get(m, 0.0) for s in samples) / n / ref
    return max(models, key=lambda m: (util(m), m))


def _knn(train, test, models, train_vecs, test_vecs, lam: float, k: int, sup_cost: float) -> tuple[float, float]:
    """kNN with a cost term, fitted offline on the train split's labels (all models' verdicts on every train
    query: information an online router never has): per test query the model of best mean verdict minus
    λ·mean cost/supervisor's mean cost over its k nearest train queries."""
    correct = np.array([[s.correct.get(m, 0.0) for m in models] for s in train])
    costs = np.array([[s.costs.get(m, 0.0) for m in models] for s in train])
    choice = []
    for v in test_vecs:
        idx, _ = topk(train_vecs @ v, k)
        u = correct[idx].mean(0) - lam * costs[idx].mean(0) / sup_cost
        choice.append(models[int(np.argmax(u))])
    return _score(test, lambda i, s: choice[i])


def knn_curve(train, test, models, supervisor: str, train_vecs, test_vecs, lambdas,
              k: int = 20) -> list[tuple[float, tuple[float, float]]]:
    """(λ, (accuracy, USD)) of the kNN-with-cost baseline at each λ (none without a train split)."""
    if not train or train_vecs is None:
        return []
    sup_cost = np.mean([s.costs.get(supervisor, 0.0) for s in train]) or 1.0
    return [(lam, _knn(train, test, models, train_vecs, test_vecs, lam, k, sup_cost)) for lam in lambdas]


def baselines(train, test, models, supervisor: str, train_vecs, test_vecs, seed: int,
              lam: float, k: int = 20) -> dict[str, tuple[float, float]]:
    """name -> (accuracy, USD) on the test samples. Choices use train labels only (never test gold)."""
    fit = train if train else test  # without a train split the choices are made in hindsight (flagged)
    out: dict[str, tuple[float, float]] = {}
    out["supervisor_only"] = _score(test, lambda i, s: supervisor)
    best = _best(fit, models)
    out[f"best_single ({best})"] = _score(test, lambda i, s: best)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(models), len(test))
    out["random"] = _score(test, lambda i, s: models[picks[i]])
    tasks = {s.task for s in fit}
    static = {t: _best([s for s in fit if s.task == t], models) for t in tasks}
    out["static_per_task"] = _score(test, lambda i, s: static.get(s.task, best))
    sup_cost = np.mean([s.costs.get(supervisor, 0.0) for s in fit]) or 1.0
    if train and train_vecs is not None:
        for name, lam_k in (("knn", 0.0), ("knn_cost_aware", lam)):
            out[name] = _knn(train, test, models, train_vecs, test_vecs, lam_k, k, sup_cost)
    right, usd = 0, 0.0
    for s in test:
        ok = [s.costs.get(m, 0.0) for m in models if s.correct.get(m, 0.0) >= 1.0]
        right += bool(ok)
        usd += min(ok) if ok else min(s.costs.get(m, 0.0) for m in models)
    out["oracle"] = (right / max(1, len(test)), usd)
    return out
