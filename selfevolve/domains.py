"""Online domain discovery: leader clustering of query embeddings with stable ids and term labels."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

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


def initialize(radius: float = 0.5, max_domains: int = 8, max_terms: int = _MAX_TERMS,
               tail_chars: int = 600) -> dict:
    """Empty state; a query joins the nearest domain if its cosine distance is within radius.

    Past max_domains a query joins the nearest domain whatever its distance. Labels read only the
    last tail_chars of a text: few-shot prompts put the question last, after a prefix shared by a
    whole task, whose words would otherwise name every domain of that task.
    """
    if not 0.0 < radius <= 2.0:
        raise ValidationError(f"radius must be in (0, 2], got {radius}")
    if max_domains < 1:
        raise ValidationError("max_domains must be at least 1")
    return {"radius": float(radius), "max_domains": int(max_domains), "max_terms": int(max_terms),
            "tail_chars": int(tail_chars), "centroids": [], "counts": [], "terms": [], "df": {}, "docs": 0}


def terms(text: str) -> list[str]:
    """Distinct lower-case content words of a text, in first-seen order."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


def nearest(state: Mapping, vec: Sequence[float]) -> tuple[int, float]:
    """(domain id, cosine similarity) of the closest centroid; (-1, -inf) when there is none."""
    if not state["centroids"]:
        return -1, float("-inf")
    c = np.asarray(state["centroids"], dtype=np.float64)
    v = _unit(vec)
    sims = c @ v
    i = int(np.argmax(sims))  # argmax takes the lowest id on ties, keeping replays identical
    return i, float(sims[i])


def _unit(vec: Sequence[float]) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValidationError("cannot cluster a zero or non-finite embedding")
    return v / norm


def assign(state: Mapping, vec: Sequence[float], text: str = "") -> tuple[dict, int]:
    """Place one query; returns the new state and its domain id (ids are never reused or moved)."""
    v = _unit(vec)
    i, sim = nearest(state, v)
    out = {**state, "centroids": list(state["centroids"]), "counts": list(state["counts"]),
           "terms": list(state["terms"]), "df": dict(state["df"]), "docs": state["docs"] + 1}
    full = len(out["centroids"]) >= state["max_domains"]
    if i < 0 or (1.0 - sim > state["radius"] and not full):
        i = len(out["centroids"])
        out["centroids"].append(v.tolist())
        out["counts"].append(1)
        out["terms"].append({})
    else:
        n = out["counts"][i] + 1
        # The running mean keeps a centroid where its members are; renormalising keeps cosine exact.
        c = np.asarray(out["centroids"][i]) * (n - 1) / n + v / n
        out["centroids"][i] = (c / np.linalg.norm(c)).tolist()
        out["counts"][i] = n
    words = terms(text[-state["tail_chars"]:] if state["tail_chars"] > 0 else text)
    bag = dict(out["terms"][i])
    for w in words:
        bag[w] = bag.get(w, 0) + 1
        out["df"][w] = out["df"].get(w, 0) + 1
    out["terms"][i] = _prune(bag, state["max_terms"])
    if len(out["df"]) > 8 * state["max_terms"]:
        out["df"] = _prune(out["df"], 8 * state["max_terms"])
    return out, i


def _prune(bag: dict, limit: int) -> dict:
    # Bounded so the state a Faust table stores does not grow with the stream.
    if len(bag) <= limit:
        return bag
    kept = sorted(bag.items(), key=lambda kv: (-kv[1], kv[0]))[: limit // 2]
    return dict(kept)


def label(state: Mapping, domain: int, k: int = 3) -> str:
    """The domain's k most distinctive terms (count in domain times inverse document frequency)."""
    if not 0 <= domain < len(state["terms"]):
        raise ValidationError(f"no domain {domain}")
    bag = state["terms"][domain]
    docs = max(1, state["docs"])

    def weight(kv: tuple[str, int]) -> float:
        w, c = kv
        return c * math.log((1 + docs) / (1 + state["df"].get(w, c)))

    top = sorted(bag.items(), key=lambda kv: (-weight(kv), kv[0]))[:k]
    return " ".join(w for w, _ in top) or f"domain-{domain}"


def labels(state: Mapping, k: int = 3) -> dict[int, str]:
    """Label of every domain."""
    return {d: label(state, d, k) for d in range(len(state["centroids"]))}


def sizes(state: Mapping) -> dict[int, int]:
    """Queries seen per domain."""
    return dict(enumerate(state["counts"]))
