"""No-gold scores per response (relevance, correctness, completeness, clarity, composite) and the winner."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from selfevolve.config import DEFAULTS
from selfevolve.scoring import checkers

# (relevance, correctness, completeness, clarity): Settings.score_weights, passed down by the scorer.
DEFAULT_WEIGHTS = DEFAULTS.score_weights


@dataclass(frozen=True)
class ResponseScore:
    model: str
    relevance: float
    correctness: float
    completeness: float
    clarity: float
    composite: float
    confidence: float
    key: str | None = None  # the normalised answer (choice letter) used for agreement


def _clip(p: float) -> float:
    return min(0.97, max(0.03, p))


def vote_posterior(keys: dict[str, str | None], prior: dict[str, float], n_options: int) -> dict[str, float]:
    """P(option is right) from independent voters of accuracy prior[m]; malformed answers abstain."""
    cands = sorted({k for k in keys.values() if k is not None})
    if not cands:
        return {}
    others = max(1, n_options - 1)
    logp = {}
    for c in cands:
        s = 0.0
        for m, k in keys.items():
            if k is None:
                continue
            p = _clip(prior.get(m, 0.5))
            s += math.log(p) if k == c else math.log((1 - p) / others)
        logp[c] = s
    # Options nobody chose share the leftover mass: they matter when all voters are weak.
    unvoted = max(0, n_options - len(cands))
    silent = sum(math.log((1 - _clip(prior.get(m, 0.5))) / others) for m, k in keys.items() if k is not None)
    top = max(list(logp.values()) + ([silent] if unvoted else []))
    z = sum(math.exp(v - top) for v in logp.values()) + unvoted * math.exp(silent - top)
    return {c: math.exp(v - top) / z for c, v in logp.items()}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{3,}", text.lower())}


def score_responses(prompt: str, answers: dict[str, str], prior: dict[str, float],
                    weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS,
                    code_limits: checkers.Limits = checkers.DEFAULT_LIMITS) -> dict[str, ResponseScore]:
    """Score every answer from the answers themselves, the models' prior confidence and gold-free checks."""
    wr, wc, wm, wl = weights
    out: dict[str, ResponseScore] = {}
    k = checkers.kind(prompt)
    if k == checkers.CHOICE:
        offered = checkers.options(prompt)
        keys = {m: checkers.choice_letter(a, offered) for m, a in answers.items()}
        post = vote_posterior(keys, prior, len(offered))
        for m, a in answers.items():
            key = keys[m]
            ok = key is not None
            corr = post.get(key, 0.0) if ok else 0.0
            clarity = 1.0 if ok and len(a.strip()) <= 3 else (0.7 if ok else 0.2)
            out[m] = _make(m, 1.0 if ok else 0.0, corr, 1.0 if ok else 0.0, clarity, (wr, wc, wm, wl), key)
        return out
    if k == checkers.CODE:
        for m, a in answers.items():
            chk = checkers.run_code(a, code_limits)  # a sandbox that cannot be made: not ran, no credit
            p = _clip(prior.get(m, 0.5))
            if not chk.has_code:
                corr = 0.1 * p
            elif not chk.ran:
                corr = 0.3 * p
            elif chk.asserts:
                corr = 1 - (1 - p) * 0.6  # its own tests passed: fewer ways left to be wrong
            else:
                corr = p
            comp = 1.0 if chk.has_code and re.search(r"\breturn\b", checkers.extract_code(a)) else 0.5 * chk.has_code
            clarity = 1.0 if "```" in a else 0.6
            rel = 1.0 if chk.has_code else 0.2
            out[m] = _make(m, rel, corr, comp, clarity, (wr, wc, wm, wl), None)
        return out
    qwords = _words(prompt)
    norm = {m: " ".join(a.lower().split()) for m, a in answers.items()}
    for m, a in answers.items():
        p = _clip(prior.get(m, 0.5))
        agree = sum(1 for o, t in norm.items() if o != m and t == norm[m] and t)
        corr = 1 - (1 - p) * (0.5 ** agree)
        aw = _words(a)
        rel = len(aw & qwords) / max(1, len(qwords)) if qwords else 1.0
        rel = min(1.0, 0.3 + rel) if aw else 0.0
        comp = min(1.0, len(a.split()) / 30) if a.strip() else 0.0
        tokens = a.split()
        clarity = len(set(tokens)) / len(tokens) if tokens else 0.0
        out[m] = _make(m, rel, corr, comp, clarity, (wr, wc, wm, wl), None)
    return out


def _make(m, rel, corr, comp, clar, w, key) -> ResponseScore:
    total = sum(w) or 1.0
    composite = (w[0] * rel + w[1] * corr + w[2] * comp + w[3] * clar) / total
    return ResponseScore(m, rel, corr, comp, clar, composite, corr, key)


def winner(scores: dict[str, ResponseScore], order: list[str]) -> str | None:
    """Highest composite; ties go to the earlier (cheaper) call."""
    if not scores:
        return None
    rank = {m: i for i, m in enumerate(order)}
    return max(scores.values(), key=lambda s: (s.composite, -rank.get(s.model, len(rank)))).model
