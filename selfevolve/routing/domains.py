"""Online domain discovery: leader clustering of query embeddings with stable ids and term labels."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from selfevolve.config import DEFAULTS
from selfevolve.errors import ValidationError

_WORD = re.compile(r"[a-z][a-z_]{2,}")
# Prompt boilerplate words carry no topic; without this list every label reads "the answer print".
STOPWORDS = frozenset("""
the and for are but not you all any can had her was one our out has him his how its may new now
old see two way who did get let put say she too use that with have this will your from they know
want been good much some time very when come here just like long make many over such take than them
then well were what which while would there their about after again also because before being below
between both could does doing down during each even every few further into more most must only other
own same should since still those through under until upon where whom why yet these itself answer
answers print single choice without explanation letter correct following please question questions
""".split())
_MAX_TERMS = 400


def initialize(radius: float = DEFAULTS.domain_radius, max_domains: int = DEFAULTS.max_domains, max_terms: int = _MAX_TERMS,
               tail_chars: int = 600) -> dict:
    """Empty state; a query joins the nearest domain if its cosine distance is within radius.

    Past max_domains the pair of domains cheapest to merge (Ward) merges to make room, unless
    joining the nearest domain costs less; then the query joins it. Labels read only the
    last tail_chars of a text: few-shot prompts put the question last, after a prefix shared by a
    whole task, whose words would otherwise name every domain of that task.
    """
    if not 0.0 < radius <= 2.0:
        raise ValidationError(f"radius must be in (0, 2], got {radius}")
    if max_domains < 1:
        raise ValidationError("max_domains must be at least 1")
    return {"radius": float(radius), "max_domains": int(max_domains), "max_terms": int(max_terms),
            "tail_chars": int(tail_chars), "centroids": [], "counts": [], "terms": [], "ids": [],
            "next_id": 0, "merged": {}, "df": {}, "docs": 0}


def terms(text: str) -> list[str]:
    """Distinct lower-case content words of a text, in first-seen order."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


def nearest(state: Mapping, vec: Sequence[float]) -> tuple[int, float]:
    """(domain id, cosine similarity) of the closest centroid; (-1, -inf) when there is none."""
    i, sim = _nearest(state, _unit(vec))
    return (state["ids"][i] if i >= 0 else -1), sim


def _nearest(state: Mapping, v: np.ndarray) -> tuple[int, float]:
    if not state["centroids"]:
        return -1, float("-inf")
    sims = np.asarray(state["centroids"], dtype=np.float64) @ v
    i = int(np.argmax(sims))  # argmax takes the oldest domain on ties, keeping replays identical
    return i, float(sims[i])


def _cheapest_pair(centroids: list, counts: list) -> tuple[int, int, float]:
    """The pair whose merge adds the least within-domain spread (Ward's criterion)."""
    c = np.asarray(centroids, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    cost = np.outer(n, n) / (n[:, None] + n[None, :]) * (2.0 - 2.0 * (c @ c.T))
    np.fill_diagonal(cost, np.inf)
    flat = int(np.argmin(cost))  # row-major: the lowest (i, j) pair wins ties
    i, j = divmod(flat, len(c))
    return min(i, j), max(i, j), float(cost[i, j])


def _mean(a: Sequence[float], na: int, b: Sequence[float], nb: int) -> list[float]:
    # A count-weighted mean keeps a centroid where its members are; renormalising keeps cosine exact.
    c = (np.asarray(a) * na + np.asarray(b) * nb) / (na + nb)
    return (c / np.linalg.norm(c)).tolist()


def _unit(vec: Sequence[float]) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValidationError("cannot cluster a zero or non-finite embedding")
    return v / norm


def assign(state: Mapping, vec: Sequence[float], text: str = "") -> tuple[dict, int]:
    """Place one query; returns the new state and its domain id (ids are never reused)."""
    out, ids = assign_many(state, [vec], [text])
    return out, ids[0]


def assign_many(state: Mapping, vecs: Sequence[Sequence[float]],
                texts: Sequence[str] | None = None) -> tuple[dict, list[int]]:
    """assign() folded over a batch in order; the state is copied once per batch, not once per query (the
    router places a whole poll at a time, and copying the document frequencies dominated)."""
    out = {**state, "centroids": list(state["centroids"]), "counts": list(state["counts"]),
           "terms": list(state["terms"]), "ids": list(state["ids"]), "merged": dict(state["merged"]),
           "df": dict(state["df"])}
    texts = texts if texts is not None else [""] * len(vecs)
    return out, [_place(out, _unit(v), t) for v, t in zip(vecs, texts)]


def _place(out: dict, v: np.ndarray, text: str) -> int:
    """assign() on a state this call may change in place (all but its term bags, which are shared)."""
    i, sim = _nearest(out, v)
    out["docs"] += 1
    far = i < 0 or 1.0 - sim > out["radius"]
    if far and len(out["centroids"]) >= out["max_domains"]:
        # Ward's criterion both ways: merging the cheapest pair (often two stray singletons) or
        # stretching the nearest domain over this query, whichever spreads domains less.
        a, b, pair_cost = _cheapest_pair(out["centroids"], out["counts"])
        n = out["counts"][i]
        if pair_cost < n / (n + 1) * (2.0 - 2.0 * sim):
            _merge(out, a, b)  # room for a new domain: `far` stands
        else:
            far = False
    if far:
        i = len(out["centroids"])
        out["centroids"].append(v.tolist())
        out["counts"].append(1)
        out["terms"].append({})
        out["ids"].append(out["next_id"])
        out["next_id"] += 1
    else:  # the centroids did not move since the search above: i is still the nearest
        out["centroids"][i] = _mean(out["centroids"][i], out["counts"][i], v, 1)
        out["counts"][i] += 1
    words = terms(text[-out["tail_chars"]:] if out["tail_chars"] > 0 else text)
    bag = dict(out["terms"][i])
    for w in words:
        bag[w] = bag.get(w, 0) + 1
        out["df"][w] = out["df"].get(w, 0) + 1
    out["terms"][i] = _prune(bag, out["max_terms"])
    if len(out["df"]) > 8 * out["max_terms"]:
        out["df"] = _prune(out["df"], 8 * out["max_terms"])
    return out["ids"][i]


def _merge(out: dict, a: int, b: int) -> None:
    """Fold domain position b into a (the older id survives) and record the retired id."""
    out["centroids"][a] = _mean(out["centroids"][a], out["counts"][a], out["centroids"][b], out["counts"][b])
    out["counts"][a] += out["counts"][b]
    bag = dict(out["terms"][a])
    for w, c in out["terms"][b].items():
        bag[w] = bag.get(w, 0) + c
    out["terms"][a] = _prune(bag, out["max_terms"])
    gone, keep = out["ids"][b], out["ids"][a]
    out["merged"] = {k: (keep if v == gone else v) for k, v in out["merged"].items()}
    out["merged"][str(gone)] = keep
    for key in ("centroids", "counts", "terms", "ids"):
        del out[key][b]


def resolve(state: Mapping, domain: int) -> int:
    """The live id a (possibly merged-away) domain id now belongs to."""
    return state["merged"].get(str(domain), domain)


def _prune(bag: dict, limit: int) -> dict:
    # Bounded so the state a Faust table stores does not grow with the stream.
    if len(bag) <= limit:
        return bag
    kept = sorted(bag.items(), key=lambda kv: (-kv[1], kv[0]))[: limit // 2]
    return dict(kept)


def label(state: Mapping, domain: int, k: int = 3) -> str:
    """The domain's k most distinctive terms (count in domain times smoothed idf)."""
    domain = resolve(state, domain)
    if domain not in state["ids"]:
        raise ValidationError(f"no domain {domain}")
    bag = state["terms"][state["ids"].index(domain)]
    docs = max(1, state["docs"])

    def weight(kv: tuple[str, int]) -> float:
        w, c = kv
        # Smoothed idf (+1, as sklearn does): a word every query shares still names a lone domain.
        return c * (1.0 + math.log((1 + docs) / (1 + state["df"].get(w, c))))

    top = sorted(bag.items(), key=lambda kv: (-weight(kv), kv[0]))[:k]
    return " ".join(w for w, _ in top) or f"domain-{domain}"


def labels(state: Mapping, k: int = 3) -> dict[int, str]:
    """Label of every live domain."""
    return {d: label(state, d, k) for d in state["ids"]}


def sizes(state: Mapping) -> dict[int, int]:
    """Queries seen per live domain (merged domains add up)."""
    return dict(zip(state["ids"], state["counts"]))
