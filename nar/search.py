"""Nearest-neighbour queries over a corpus: by a row's id, or by a text (looked up, else fitted in the corpus
frame first), and how well proto-space neighbours agree with the teacher's (recall@k)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nar.errors import NarError
from nar.frame import fit_in_corpus_frame
from nar.index import corpus_vectors, load_index
from nar.space import PROTO_SPACES, space_vectors


def recall_at_k(found: list[list[str]], reference: list[list[str]], k: int) -> float:
    """Mean over queries of |top-k found ∩ top-k reference| / k."""
    if not found:
        return 0.0
    return float(np.mean([len(set(f[:k]) & set(r[:k])) / k for f, r in zip(found, reference)]))


def _topk_ids(x: np.ndarray, ids: list[str], k: int) -> list[list[str]]:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order]


def neighbour_agreement(path: str | Path, space: str = "e", k: int = 10) -> float:
    """Recall@k of proto-space neighbours against teacher-space neighbours, every text a query (self excluded)."""
    ids, x, cols = corpus_vectors(path, space)
    if len(ids) <= k:
        raise NarError(f"k={k} needs more than {k} texts; the corpus has {len(ids)}")
    t = space_vectors(None, None, cols["teacher"], "teacher").numpy()
    return recall_at_k(_topk_ids(x, ids, k), _topk_ids(t, ids, k), k)


def neighbors(path: str | Path, *, id: str | None = None, text: str | None = None, k: int = 10, space: str = "e",
              kind: str = "flat", llm=None, teacher=None) -> dict:
    """The k nearest corpus texts to a corpus row (`id`) or to a text (looked up if present, else fitted
    in the corpus frame first). Returns {"query", "fitted", "rows": [{id, text, score}], "recall_at_k"},
    recall_at_k being the overlap of these neighbours with the teacher's top-k for the same query."""
    if (id is None) == (text is None):
        raise NarError("give exactly one of an id or a text")
    if space not in PROTO_SPACES:
        raise NarError(f"neighbours are searched in a proto-token space: {', '.join(PROTO_SPACES)}")
    ids, _, cols = corpus_vectors(path, space)
    if k >= len(ids):
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
        e, m, t = cols["e"][i:i + 1], cols["m"][i:i + 1], cols["teacher"][i:i + 1]
        query_text = cols["target"][i]
    else:
        r = fit_in_corpus_frame(path, [text], llm=llm, teacher=teacher)[0]
        e, m, t = r.e[None].numpy(), r.m[None].numpy(), r.payload["teacher"][None].numpy()
        query_text, fitted = text, True
    scores, found = index.search(space_vectors(e, m, None, space).numpy(), min(k + 1, len(ids)))
    rows = [{"id": j, "text": cols["target"][pos[j]], "score": float(s)}
            for j, s in zip(found[0], scores[0]) if j is not None and j != id][:k]
    tsims = space_vectors(None, None, cols["teacher"], "teacher").numpy() @ \
        space_vectors(None, None, t, "teacher").numpy()[0]
    if id is not None:
        tsims[pos[id]] = -np.inf
    teacher_top = [ids[j] for j in np.argsort(-tsims)[:k]]
    return {"query": {"id": id, "text": query_text}, "fitted": fitted, "space": space, "kind": kind,
            "rows": rows, "recall_at_k": recall_at_k([[r["id"] for r in rows]], [teacher_top], k)}
