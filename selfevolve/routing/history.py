"""Past queries: a FAISS index of their embeddings plus what was paid, who won and how each model did."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfevolve.errors import StoreError
from selfevolve.routing.linear import normalize
from selfevolve.routing.predictor import Predictor
from selfevolve.wire.tenancy import DEFAULT_TENANT, query_key

# Exact search costs ~1.2 ms at 10k and ~11 ms at 100k entries on one core (measured with
# `python -m selfevolve.routing.history`); past 50k the flat index is migrated once to HNSW (~log n).
FLAT_LIMIT = 50_000
# Ridge strength of the quality predictor, in verdicts: on RouterBench (notes/h8) 3-30 measured alike,
# 1 overfits the 385 weights to a few hundred verdicts.
PREDICTOR_REG = 10.0


@dataclass
class Record:
    """One delivered query: models called with their cost, the winner, and feedback once it arrives.
    Identified by (tenant, query_id): two tenants may use the same id."""

    query_id: str
    tenant: str = DEFAULT_TENANT
    strategy: str = ""
    costs: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float | None] = field(default_factory=dict)
    winner: str | None = None
    delivered: bool = True
    task: str = ""
    ts_ms: int = 0
    source: str = ""  # where its query was read (topic:partition:offset): a re-delivery has the same

    @property
    def key(self) -> str:
        return query_key(self.tenant, self.query_id)

    @property
    def called(self) -> tuple[str, ...]:
        return tuple(self.costs)


class History:
    """Append-only store; search returns the k most similar past records, best first. Every verdict also
    trains `predictor`, a per-model ridge regression of quality on the embedding (the router's prior)."""

    def __init__(self, dim: int = 384, flat_limit: int = FLAT_LIMIT, hnsw_m: int = 32,
                 ef_search: int = 64, predictor_reg: float = PREDICTOR_REG) -> None:
        import faiss

        self.dim, self.flat_limit, self.hnsw_m, self.ef_search = dim, flat_limit, hnsw_m, ef_search
        self.predictor = Predictor(dim, predictor_reg)
        self.index = faiss.IndexFlatIP(dim)
        self.records: list[Record] = []
        self._pos: dict[str, int] = {}  # canonical key (tenant/query id) -> index
        # Running per-model sums (quality sum, quality n, cost sum, cost n): the global prior, O(1) to read.
        self.stats: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def kind(self) -> str:
        return "flat" if type(self.index).__name__ == "IndexFlatIP" else "hnsw"

    def add(self, vec: np.ndarray, record: Record) -> None:
        self.add_many(np.atleast_2d(vec), [record])

    def add_many(self, vecs: np.ndarray, records: list[Record]) -> None:
        vecs = normalize(np.atleast_2d(vecs))
        if vecs.shape != (len(records), self.dim):
            raise StoreError(f"expected {len(records)} vectors of dim {self.dim}, got {vecs.shape}")
        keys = [r.key for r in records]
        if len(set(keys)) < len(keys) or any(k in self._pos for k in keys):
            known = next(r for i, r in enumerate(records) if r.key in self._pos or r.key in keys[:i])
            raise StoreError(f"query {known.query_id} of tenant {known.tenant} is already in the history")
        for v, r in zip(vecs, records):
            self._pos[r.key] = len(self.records)
            self.records.append(r)
            self._count(r)
            self._learn(v, r)
        self.index.add(vecs)
        if self.kind == "flat" and self.index.ntotal > self.flat_limit:
            self._to_hnsw()

    def _to_hnsw(self) -> None:
        import faiss

        vecs = self.index.reconstruct_n(0, self.index.ntotal)
        hnsw = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.hnsw.efSearch = self.ef_search
        hnsw.add(vecs)
        self.index = hnsw

    def search(self, vec: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """The k nearest past records with their cosine similarity, most similar first."""
        return self.search_many(np.atleast_2d(vec), k)[0]

    def search_many(self, vecs: np.ndarray, k: int) -> list[list[tuple[Record, float]]]:
        """search() for each row of vecs in one index call: a flat index then runs one matrix product
        instead of one pass over every stored vector per query."""
        vecs = np.atleast_2d(vecs)
        if not self.records or k <= 0:
            return [[] for _ in range(len(vecs))]
        sims, ids = self.index.search(normalize(vecs), min(k, len(self.records)))
        return [[(self.records[i], float(s)) for i, s in zip(row_ids, row_sims) if i >= 0]
                for row_ids, row_sims in zip(ids, sims)]

    def _count(self, r: Record) -> None:
        for m, c in r.costs.items():
            st = self.stats.setdefault(m, [0.0, 0, 0.0, 0])
            st[2] += c
            st[3] += 1
        for m, q in r.quality.items():
            if q is not None:
                st = self.stats.setdefault(m, [0.0, 0, 0.0, 0])
                st[0] += q
                st[1] += 1

    def _learn(self, vec: np.ndarray, r: Record) -> None:
        for m, q in r.quality.items():
            if q is not None:
                self.predictor.update(vec, m, q)

    def vector(self, query_id: str, tenant: str = DEFAULT_TENANT) -> np.ndarray:
        """The stored (unit) embedding of a past query."""
        pos = self._pos.get(query_key(tenant, query_id))
        if pos is None:
            raise StoreError(f"no query {query_id} of tenant {tenant} in the history")
        return self.index.reconstruct(pos)

    def set_quality(self, query_id: str, model: str, quality: float, tenant: str = DEFAULT_TENANT) -> None:
        """Record a verdict; the caller (learning.apply_feedback) enforces the bandit rule."""
        r = self.get(query_id, tenant)
        if r is None:
            raise StoreError(f"no query {query_id} of tenant {tenant} in the history")
        vec = self.vector(query_id, tenant)
        st = self.stats.setdefault(model, [0.0, 0, 0.0, 0])
        old = r.quality.get(model)
        if old is not None:  # a corrected verdict replaces the old one
            st[0] -= old
            st[1] -= 1
            self.predictor.update(vec, model, old, sign=-1)
        r.quality[model] = float(quality)
        st[0] += float(quality)
        st[1] += 1
        self.predictor.update(vec, model, quality)

    def predict(self, vecs: np.ndarray, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The predictor's (mean quality, evidence in verdicts) per query row and model."""
        return self.predictor.predict(normalize(np.atleast_2d(vecs)), models)

    def model_mean(self, model: str) -> tuple[float | None, int, float | None]:
        """(mean quality or None, verdict count, mean cost or None) of a model over the whole history."""
        st = self.stats.get(model)
        if st is None:
            return None, 0, None
        return (st[0] / st[1] if st[1] else None, int(st[1]), st[2] / st[3] if st[3] else None)

    def get(self, query_id: str, tenant: str = DEFAULT_TENANT) -> Record | None:
        """The record of tenant's query query_id; another tenant's query of the same id is not it."""
        pos = self._pos.get(query_key(tenant, query_id))
        return None if pos is None else self.records[pos]

    def save(self, directory: Path) -> None:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            faiss.write_index(self.index, str(directory / "index.faiss"))
            with open(directory / "records.jsonl", "w") as f:
                # vars(), not asdict(): a Record holds no nested dataclass, and asdict's deep copy made a
                # snapshot of 20k records hold the stream worker's loop for 0.7 s instead of 0.15 s.
                f.writelines(json.dumps(vars(r)) + "\n" for r in self.records)
            meta = {"dim": self.dim, "flat_limit": self.flat_limit, "hnsw_m": self.hnsw_m,
                    "ef_search": self.ef_search}
            (directory / "meta.json").write_text(json.dumps(meta))
            with open(directory / "predictor.npz", "wb") as f:
                np.savez(f, **self.predictor.to_state())
        except (OSError, RuntimeError) as e:
            raise StoreError(f"cannot save history to {directory}") from e

    @classmethod
    def load(cls, directory: Path) -> History:
        import faiss

        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text())
            h = cls(**meta)
            h.index = faiss.read_index(str(directory / "index.faiss"))
            if hasattr(h.index, "hnsw"):
                h.index.hnsw.efSearch = h.ef_search
            with open(directory / "records.jsonl") as f:
                h.records = [Record(**json.loads(line)) for line in f if line.strip()]
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise StoreError(f"cannot load history from {directory}") from e
        if h.index.ntotal != len(h.records):
            raise StoreError(f"{directory}: {h.index.ntotal} vectors but {len(h.records)} records")
        h._pos = {r.key: i for i, r in enumerate(h.records)}
        for r in h.records:
            h._count(r)
        h._load_predictor(directory / "predictor.npz")
        return h

    def _load_predictor(self, path: Path) -> None:
        """The saved predictor; a snapshot from before it existed retrains it from the stored verdicts."""
        if path.exists():
            try:
                with np.load(path) as z:
                    self.predictor = Predictor.from_state(z)
            except (OSError, ValueError) as e:
                raise StoreError(f"cannot load the quality predictor from {path}") from e
            if self.predictor.dim != self.dim:
                raise StoreError(f"{path}: predictor of dim {self.predictor.dim}, history of dim {self.dim}")
            return
        for i, r in enumerate(self.records):
            if any(q is not None for q in r.quality.values()):
                self._learn(self.index.reconstruct(i), r)


def _scale(n: int, queries: int, seed: int) -> dict:
    """Search latency of the flat and migrated indexes on n random unit vectors (a measurement)."""
    rng = np.random.default_rng(seed)
    h = History(flat_limit=n + 1)
    vecs = normalize(rng.standard_normal((n, 384), dtype=np.float32))
    h.index.add(vecs)
    h.records = [Record(query_id=str(i)) for i in range(n)]
    # Each query is a planted near-duplicate of a stored vector: recall@1 is whether it is found.
    target = rng.integers(0, n, queries)
    qs = vecs[target] + 0.05 * normalize(rng.standard_normal((queries, 384), dtype=np.float32))
    out = {"n": n}
    for kind in ("flat", "hnsw"):
        if kind == "hnsw":
            t = time.perf_counter()
            h._to_hnsw()
            out["hnsw_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ids = [h.index.search(normalize(q[None]), 10)[1][0] for q in qs]
        out[f"{kind}_ms_per_query"] = 1000 * (time.perf_counter() - t) / queries
        out[f"{kind}_top10"] = ids
    exact, approx = out.pop("flat_top10"), out.pop("hnsw_top10")
    out["flat_recall_at_1"] = float(np.mean([e[0] == t for e, t in zip(exact, target)]))
    out["hnsw_recall_at_1"] = float(np.mean([a[0] == t for a, t in zip(approx, target)]))
    return out


def main(argv: list[str] | None = None) -> int:
    import faiss

    p = argparse.ArgumentParser(description="measure history search latency at scale")
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    faiss.omp_set_num_threads(a.threads)
    for n in a.n:
        print(json.dumps(_scale(n, a.queries, seed=0)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
