"""Loading what every analysis needs from a corpus: its LLM (checked), layout, and a sample of rows."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from nar import corpus as corpus_store
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout, load_llm


def corpus_llm(path: str | Path, llm: FrozenLLM | None = None, device: str = "auto"
               ) -> tuple[FrozenLLM, Layout, str]:
    """The corpus's frozen LLM (loaded, or the one given after a fingerprint check), layout and precision."""
    man = corpus_store.read_manifest(path)
    if llm is None:
        llm = load_llm(man.get("build_config", {}).get("model", "smollm2-135m-instruct"), device=device)
    if llm.fingerprint != man["llm"]["fingerprint"]:
        raise NarError(f"corpus {path} was fitted with {man['llm']['fingerprint']}, the model is {llm.fingerprint}")
    return llm, Layout.from_dict(man["layout"]), man.get("fit_config", {}).get("precision", "fp32")


def corpus_sample(path: str | Path, n: int | None, seed: int = 0, converged_only: bool = True) -> dict:
    """Up to n rows (seeded sample) as {id, target, token_ids, e (n, D), m (n, D), teacher (n, T)}."""
    t = corpus_store.read_table(path)
    ok = [i for i in range(t.num_rows) if not t.column("failed")[i].as_py()
          and (not converged_only or t.column("converged")[i].as_py())]
    if not ok:
        raise NarError(f"corpus {path} has no {'converged ' if converged_only else ''}rows to analyse")
    if n is not None and n < len(ok):
        ok = sorted(random.Random(seed).sample(ok, n))
    col = {c: t.column(c) for c in ("id", "target", "token_ids", "e", "m", "teacher")}
    return {"id": [col["id"][i].as_py() for i in ok], "target": [col["target"][i].as_py() for i in ok],
            "token_ids": [col["token_ids"][i].as_py() for i in ok],
            **{c: torch.tensor([col[c][i].as_py() for i in ok], dtype=torch.float32) for c in ("e", "m", "teacher")}}
