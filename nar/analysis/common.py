"""Loading what every analysis of a corpus needs: its LLM and layout, and a seeded sample of its rows."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from nar import corpus as corpus_store
from nar.errors import NarError


def corpus_sample(path: str | Path, n: int | None, seed: int = 0, converged_only: bool = True) -> dict:
    """Up to n rows (seeded sample) as {id, target, token_ids, e (n, D), m (n, D), teacher (n, T)}."""
    cols = corpus_store.columns(path, ["id", "target", "token_ids", "e", "m", "teacher"],
                                rows="converged" if converged_only else "ok")
    ok = list(range(len(cols["id"])))
    if not ok:
        raise NarError(f"corpus {path} has no {'converged ' if converged_only else ''}rows to analyse")
    if n is not None and n < len(ok):
        ok = sorted(random.Random(seed).sample(ok, n))
    return {**{c: [cols[c][i] for i in ok] for c in ("id", "target", "token_ids")},
            **{c: torch.from_numpy(cols[c][ok]) for c in ("e", "m", "teacher")}}


def corpus_and_sample(path: str | Path, llm, n: int, seed: int):
    """(llm, layout, precision) of the corpus (`nar.frame.corpus_llm`) and a sample of its converged rows."""
    from nar.frame import corpus_llm

    return *corpus_llm(path, llm), corpus_sample(path, n, seed, converged_only=True)
