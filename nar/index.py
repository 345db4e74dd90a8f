"""FAISS indexes over proto-token space (cosine similarity = inner product of L2-normalised vectors).

    CORPUS_DIR/index/<space>-<kind>.faiss     the FAISS index
    CORPUS_DIR/index/<space>-<kind>.json      ids (row order), space, kind, parameters, corpus fingerprint

Spaces are `nar.space`'s: 'e', 'm', 'em' and 'teacher' (the stored teacher embeddings, for comparisons).
Kinds: 'flat' (exact), 'ivf' (inverted lists; nlist, nprobe) and 'hnsw' (graph; M, efSearch). Queries by
id or by a new text are `nar.search`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nar import corpus as corpus_store
from nar import faults
from nar.artifacts import atomic_write, atomic_write_json, check_fingerprint, read_json
from nar.errors import NarError
from nar.space import space_vectors

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")


def corpus_vectors(path: str | Path, space: str) -> tuple[list[str], np.ndarray, dict]:
    """Ids, unit vectors of the space (N, d) and the other columns of the non-failed rows of a corpus."""
    corpus_store.read_manifest(path)
    cols = corpus_store.columns(path, ["id", "target", "source", "accuracy", "n_tokens", "e", "m", "teacher"],
                                rows="ok")
    if not cols["id"]:
        raise NarError(f"corpus {path} is empty")
    return cols["id"], space_vectors(cols["e"], cols["m"], cols["teacher"], space).numpy(), cols


@dataclass
class ProtoIndex:
    index: object  # faiss.Index
    ids: list[str]
    meta: dict

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k (scores (Q, k), ids) for L2-normalised queries (Q, d)."""
        if k > len(self.ids):
            raise NarError(f"k={k} is larger than the corpus ({len(self.ids)} texts)")
        scores, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, [[self.ids[j] if j >= 0 else None for j in row] for row in idx]


def _paths(path: str | Path, space: str, kind: str) -> tuple[Path, Path]:
    d = Path(path) / "index"
    return d / f"{space}-{kind}.faiss", d / f"{space}-{kind}.json"


def build_index(path: str | Path, space: str = "e", kind: str = "flat", *, nlist: int | None = None,
                nprobe: int = 8, hnsw_m: int = 32, ef_search: int = 64) -> ProtoIndex:
    """Build and save an index over a corpus; returns it."""
    import faiss

    if kind not in KINDS:
        raise NarError(f"kind must be one of {KINDS}, not {kind!r}")
    ids, x, _ = corpus_vectors(path, space)
    index = make_faiss_index(x, kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search)
    meta = {"space": space, "kind": kind, "dim": int(x.shape[1]), "count": len(ids),
            "corpus_fingerprint": corpus_store.fingerprint(path),
            "llm_fingerprint": corpus_store.read_manifest(path)["llm"]["fingerprint"],
            "params": {"nlist": getattr(index, "nlist", None), "nprobe": nprobe if kind == "ivf" else None,
                       "hnsw_m": hnsw_m if kind == "hnsw" else None,
                       "ef_search": ef_search if kind == "hnsw" else None}}
    fpath, jpath = _paths(path, space, kind)
    atomic_write(fpath, lambda tmp: faiss.write_index(index, tmp))
    faults.point("index.faiss")
    atomic_write_json(jpath, {**meta, "ids": ids}, indent=None)
    return ProtoIndex(index, ids, meta)


def make_faiss_index(x: np.ndarray, kind: str, *, nlist: int | None = None, nprobe: int = 8, hnsw_m: int = 32,
                     ef_search: int = 64, train_per_list: int = 64):
    """An inner-product FAISS index over the rows of x (already L2-normalised). IVF's k-means is trained on
    at most train_per_list x nlist rows (a seeded sample), which keeps building a 1M-vector index in minutes."""
    import faiss

    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(len(x)))))
        if len(x) < nlist:
            raise NarError(f"IVF needs at least nlist={nlist} vectors to train, the corpus has {len(x)}; "
                           "use --kind flat or a smaller --nlist")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x
        if len(x) > train_per_list * nlist:
            sample = x[np.random.default_rng(0).choice(len(x), train_per_list * nlist, replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise NarError(f"kind must be one of {KINDS}, not {kind!r}")
    index.add(x)
    return index


def load_index(path: str | Path, space: str = "e", kind: str = "flat", *, build_missing: bool = True) -> ProtoIndex:
    """Load an index and check it belongs to the corpus as it is now; a missing one is built (with a notice)."""
    import faiss

    fpath, jpath = _paths(path, space, kind)
    if not fpath.is_file() or not jpath.is_file():
        if not build_missing:
            raise NarError(f"no {space}/{kind} index in {path}; run: nar index build {path} --space {space}")
        log.warning("no %s/%s index in %s yet: building it now", space, kind, path)
        return build_index(path, space, kind)
    meta = read_json(jpath)
    check_fingerprint(meta.get("corpus_fingerprint"), corpus_store.fingerprint(path), f"the {space}/{kind} index in "
                      f"{path}", kind="corpus", hint=f"; rebuild it: nar index build {path} --space {space} --kind "
                      f"{kind}")
    index, ids = faiss.read_index(str(fpath)), meta.pop("ids")
    if index.ntotal != len(ids) or index.d != meta.get("dim"):  # the halves of two builds: a crash between writes
        if not build_missing:
            raise NarError(f"the {space}/{kind} index in {path} is half-written; run: nar index build {path} "
                           f"--space {space} --kind {kind}")
        log.warning("the %s/%s index in %s is half-written (an interrupted build): rebuilding it", space, kind, path)
        return build_index(path, space, kind)
    return ProtoIndex(index, ids, meta)
