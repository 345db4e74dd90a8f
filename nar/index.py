"""FAISS indexes over proto-token space (cosine similarity = inner product of L2-normalised vectors).

    CORPUS_DIR/index/<space>-<kind>.faiss     the FAISS index
    CORPUS_DIR/index/<space>-<kind>.json      ids (row order), space, kind, parameters, corpus fingerprint

Spaces: 'e', 'm', 'em' ([e/|e|; m/|m|] / sqrt(2): both halves weigh the same), and 'teacher' (the stored
teacher embeddings, for comparisons). Kinds: 'flat' (exact), 'ivf' (inverted lists; nlist, nprobe) and
'hnsw' (graph; M, efSearch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nar import corpus as corpus_store
from nar.errors import NarError

log = logging.getLogger(__name__)

SPACES = ("e", "m", "em", "teacher")
KINDS = ("flat", "ivf", "hnsw")


def space_vectors(e: np.ndarray, m: np.ndarray, teacher: np.ndarray | None, space: str) -> np.ndarray:
    """(N, d) float32, L2-normalised rows of the chosen space."""
    def unit(x):
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if space == "e":
        return unit(e)
    if space == "m":
        return unit(m)
    if space == "em":
        return unit(np.concatenate([unit(e), unit(m)], axis=1))
    if space == "teacher":
        return unit(teacher)
    raise NarError(f"space must be one of {SPACES}, not {space!r}")


def corpus_fingerprint(path: str | Path) -> str:
    """Changes whenever rows are added or the corpus is rebuilt: LLM fingerprint + the sorted ids."""
    man = corpus_store.read_manifest(path)
    ids = sorted(corpus_store.read_table(path, ["id"]).column("id").to_pylist())
    h = hashlib.blake2b(digest_size=8)
    h.update(str(man.get("llm", {}).get("fingerprint")).encode())
    h.update("\x1f".join(ids).encode())
    return f"{len(ids)}@{h.hexdigest()}"


def corpus_vectors(path: str | Path, space: str) -> tuple[list[str], np.ndarray, dict]:
    """Ids, space vectors and the other columns of the non-failed rows of a corpus."""
    corpus_store.read_manifest(path)
    table = corpus_store.read_table(path)
    if table.num_rows == 0:
        raise NarError(f"corpus {path} is empty")
    failed = np.asarray(table.column("failed").to_pylist(), dtype=bool)
    keep = np.flatnonzero(~failed)
    cols = {c: [table.column(c)[int(i)].as_py() for i in keep] for c in ("id", "target", "source", "accuracy",
                                                                          "n_tokens")}
    e = np.asarray(table.column("e").to_pylist(), dtype=np.float32)[keep]
    m = np.asarray(table.column("m").to_pylist(), dtype=np.float32)[keep]
    t = np.asarray(table.column("teacher").to_pylist(), dtype=np.float32)[keep]
    cols.update(e=e, m=m, teacher=t)
    return cols["id"], space_vectors(e, m, t, space), cols


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
            "corpus_fingerprint": corpus_fingerprint(path),
            "llm_fingerprint": corpus_store.read_manifest(path)["llm"]["fingerprint"],
            "params": {"nlist": getattr(index, "nlist", None), "nprobe": nprobe if kind == "ivf" else None,
                       "hnsw_m": hnsw_m if kind == "hnsw" else None,
                       "ef_search": ef_search if kind == "hnsw" else None}}
    fpath, jpath = _paths(path, space, kind)
    fpath.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=fpath.parent)
    os.close(fd)
    faiss.write_index(index, tmp)
    os.replace(tmp, fpath)
    jpath.write_text(json.dumps({**meta, "ids": ids}))
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
    meta = json.loads(jpath.read_text())
    now = corpus_fingerprint(path)
    if meta.get("corpus_fingerprint") != now:
        raise NarError(f"the {space}/{kind} index in {path} was built for corpus {meta.get('corpus_fingerprint')}, "
                       f"the corpus is now {now}; rebuild it: nar index build {path} --space {space} --kind {kind}")
    ids = meta.pop("ids")
    return ProtoIndex(faiss.read_index(str(fpath)), ids, meta)


def recall_at_k(found: list[list[str]], reference: list[list[str]], k: int) -> float:
    """Mean over queries of |top-k found ∩ top-k reference| / k."""
    if not found:
        return 0.0
    return float(np.mean([len(set(f[:k]) & set(r[:k])) / k for f, r in zip(found, reference)]))


def neighbour_agreement(path: str | Path, space: str = "e", k: int = 10) -> float:
    """Recall@k of proto-space neighbours against teacher-space neighbours, every text a query (self excluded)."""
    ids, x, cols = corpus_vectors(path, space)
    if len(ids) <= k:
        raise NarError(f"k={k} needs more than {k} texts; the corpus has {len(ids)}")
    t = space_vectors(None, None, cols["teacher"], "teacher")
    return recall_at_k(_topk_ids(x, ids, k), _topk_ids(t, ids, k), k)


def _topk_ids(x: np.ndarray, ids: list[str], k: int) -> list[list[str]]:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order]


def neighbors(path: str | Path, *, id: str | None = None, text: str | None = None, k: int = 10, space: str = "e",
              kind: str = "flat", llm=None, teacher=None) -> dict:
    """The k nearest corpus texts to a corpus row (`id`) or to a text (looked up if present, else fitted
    in the corpus frame first). Returns {"query", "fitted", "rows": [{id, text, score}], "recall_at_k"},
    recall_at_k being the overlap of these neighbours with the teacher's top-k for the same query."""
    if (id is None) == (text is None):
        raise NarError("give exactly one of an id or a text")
    if space == "teacher":
        raise NarError("neighbours are searched in a proto-token space: e, m or em")
    ids, _, cols = corpus_vectors(path, space)
    if k >= len(ids) + (0 if id is None else 0):
        raise NarError(f"k={k} is too large: the corpus has {len(ids)} texts")
    index = load_index(path, space, kind)
    pos = {x: i for i, x in enumerate(ids)}
    fitted = False
    if id is None and text in cols["target"]:
        id = ids[cols["target"].index(text)]
    if id is not None:
        if id not in pos:
            raise NarError(f"id {id!r} is not in corpus {path}")
        i = pos[id]
        q = space_vectors(cols["e"][i:i + 1], cols["m"][i:i + 1], None, space)
        t = cols["teacher"][i:i + 1]
        query_text = cols["target"][i]
    else:
        from nar.build import fit_in_corpus_frame

        r = fit_in_corpus_frame(path, [text], llm=llm, teacher=teacher)[0]
        q = space_vectors(r.e[None].numpy(), r.m[None].numpy(), None, space)
        t = r.payload["teacher"][None].numpy()
        query_text, fitted = text, True
    scores, found = index.search(q, min(k + 1, len(ids)))
    rows = [{"id": j, "text": cols["target"][pos[j]], "score": float(s)}
            for j, s in zip(found[0], scores[0]) if j is not None and j != id][:k]
    tv = space_vectors(None, None, cols["teacher"], "teacher")
    tq = space_vectors(None, None, t, "teacher")[0]
    tsims = tv @ tq
    if id is not None:
        tsims[pos[id]] = -np.inf
    teacher_top = [ids[j] for j in np.argsort(-tsims)[:k]]
    return {"query": {"id": id, "text": query_text}, "fitted": fitted, "space": space, "kind": kind,
            "rows": rows, "recall_at_k": recall_at_k([[r["id"] for r in rows]], [teacher_top], k)}


def write_projector(path: str | Path, space: str = "e", log_dir: str | Path | None = None) -> Path:
    """A TensorBoard embedding-projector log of a corpus: vectors of the space, text + accuracy + N + RD
    weight as metadata. Browse with `tensorboard --logdir LOG_DIR` (Projector tab)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    ids, x, cols = corpus_vectors(path, space)
    man = corpus_store.read_manifest(path)
    rd = man.get("build_config", {}).get("rd_weight")
    log_dir = Path(log_dir or Path(path) / "projector" / space)
    w = SummaryWriter(log_dir=str(log_dir))
    meta = [[i, t.replace("\t", " ").replace("\n", " ")[:200], f"{a:.3f}", str(n), str(rd)]
            for i, t, a, n in zip(ids, cols["target"], cols["accuracy"], cols["n_tokens"])]
    w.add_embedding(torch.from_numpy(x), metadata=meta, metadata_header=["id", "text", "accuracy", "n_tokens",
                                                                          "rd_weight"], tag=f"proto_{space}")
    w.close()
    return log_dir
