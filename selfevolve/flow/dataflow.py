"""The dataflow, declared once: every fold, the event kinds it consumes, and the stream role that hosts it.

    query ──► router ──route_decision──► scorer ──inference_request──► model workers (a responder in memory)
                ▲                          ▲  └──inference_response──┘
                │                          ├──score──► evolution ──model_event / gap / spawn──► router
                │                          ├──answer──► metalearner ──strategy──► router
                │                          └──history (delivery)──► history ◄──history (verdict)── feedback
                └── reads the routing history the history fold writes; learns its domains from deliveries

The serve role hosts router, scorer, feedback and history; every serve worker folds the one-partition
history topic into its own replica of the routing history (and its router's domains), so any worker can
route any query. The history role hosts evolution and the meta-learner. `build` makes the folds of some roles with their
initial states; the in-memory driver (driver.py) and the stream hosts (streams/) run the same folds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.flow.driver import Driver, Responder
from selfevolve.flow.events import KINDS
from selfevolve.flow.cache import AnswerCacheFold
from selfevolve.flow.feedback import FeedbackFold
from selfevolve.flow.learning import HistoryFold
from selfevolve.flow.router import RouterFold
from selfevolve.flow.scorer import ScorerFold
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.embed import embedding_dim
from selfevolve.routing.history import History

SERVE, HISTORY = "serve", "history"


@dataclass(frozen=True)
class Node:
    """One fold of the dataflow: its name (the fold's `name`), host role and the kinds it reads."""

    name: str
    role: str
    consumes: tuple[str, ...]


GRAPH: tuple[Node, ...] = (
    Node("router", SERVE, ("query", "model_event", "strategy", "history")),
    Node("scorer", SERVE, ("route_decision", "inference_response")),
    Node("feedback", SERVE, ("feedback",)),
    Node("history", SERVE, ("history",)),
    Node("answer_cache", SERVE, ("history",)),
    Node("evolution", HISTORY, ("score", "model_event")),
    Node("metalearner", HISTORY, ("answer", "feedback", "strategy")),
)


def node(name: str) -> Node:
    for n in GRAPH:
        if n.name == name:
            return n
    raise ConfigError(f"no fold {name!r} in the dataflow (one of {[n.name for n in GRAPH]})")


def consumers(kind: str) -> list[str]:
    """The folds that read `kind`, in the order the driver hands them an event."""
    return [n.name for n in GRAPH if kind in n.consumes]


class Encoder:
    """An embedder made of a function texts -> (n, dim) vectors (a benchmark's cached embeddings)."""

    def __init__(self, fn: Callable[[list[str]], np.ndarray]) -> None:
        self.fn = fn

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.fn(list(texts)), dtype=np.float32)


@dataclass
class Flow:
    """The folds of some roles, their initial states, and the routing history the serve folds share."""

    folds: list[Any]
    states: dict[str, Any]
    history: History | None
    catalogue: Catalogue
    settings: Settings = field(repr=False)

    def driver(self, responder: Responder | None = None, **kw: Any) -> Driver:
        return Driver(self.folds, responder, states=dict(self.states), prefix=self.settings.topic_prefix, **kw)


def build(settings: Settings, catalogue: Catalogue, embedder: Any = None, *,
          roles: Sequence[str] = (SERVE, HISTORY), dim: int | None = None, router_options: dict | None = None,
          codec: Any = None) -> Flow:
    """The folds of `roles`, in GRAPH order. `embedder` has `encode(texts)` or is a function texts -> vectors
    (`dim` wide; by default the width of settings.embedder's vectors); `router_options` are Router keywords
    beyond Settings (the benchmarks' ablations: use_similarity, cascade); `codec`, if given, makes the scorer
    prove each output encodable."""
    if embedder is not None and not hasattr(embedder, "encode"):
        embedder = Encoder(embedder)
    folds: list[Any] = []
    states: dict[str, Any] = {}
    history = None
    if SERVE in roles:
        history_fold = HistoryFold(embedding_dim(settings) if dim is None else dim)
        history = history_fold.initialize()
        cache_fold = AnswerCacheFold(settings)
        cache = cache_fold.initialize()
        router = RouterFold(settings, catalogue, history, embedder, cache=cache)
        if router_options:
            from selfevolve.routing import Router

            # The fold routes with its `router`; an ablation swaps in one built with other options.
            router.router = Router(settings, catalogue, history, embedder, **router_options)
        folds += [router, ScorerFold(settings, catalogue, history.get, codec=codec), FeedbackFold(), history_fold,
                  cache_fold]
        # The router reads the very History and AnswerCache the history and cache folds write.
        states["history"], states["answer_cache"] = history, cache
    if HISTORY in roles:
        from selfevolve.flow.evolution import EvolutionFold
        from selfevolve.flow.metalearner import MetaLearnerFold

        folds += [EvolutionFold(settings, catalogue), MetaLearnerFold(settings, catalogue)]
    check(folds)
    return Flow(folds, states, history, catalogue, settings)


def check(folds: Sequence[Any]) -> None:
    """Each fold reads what GRAPH says it reads, and only event kinds (ConfigError otherwise)."""
    for f in folds:
        declared = node(f.name).consumes
        if tuple(f.consumes) != declared:
            raise ConfigError(f"fold {f.name} consumes {tuple(f.consumes)}, the dataflow says {declared}")
        unknown = [k for k in declared if k not in KINDS]
        if unknown:
            raise ConfigError(f"fold {f.name} consumes {unknown}, which are no event kinds")
