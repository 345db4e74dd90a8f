"""Does proto-token space mirror meaning? Spearman correlations against a teacher and human scores."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from nar.errors import NarError

STSB_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "stsb" / "dev.tsv"


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(list(x), list(y)).statistic)


def load_stsb(path: str | Path = STSB_DEV, n: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, human score 0-5) from a GLUE-layout STS-B tsv; a seeded sample of n pairs."""
    path = Path(path)
    if not path.is_file():
        raise NarError(f"no STS-B file at {path}")
    with path.open(encoding="utf-8") as f:
        rows = [(r["sentence1"], r["sentence2"], float(r["score"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def views(e: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """The spaces compared: e, m, and e+m (the concatenation [e; m]). Each (N, D) or (N, 2D)."""
    return {"e": e, "m": m, "em": torch.cat([e, m], dim=-1)}


def pair_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def columns(ds, names=("id", "e", "m", "teacher")) -> dict:
    """Whole columns of a corpus `datasets.Dataset` (tensors stacked), or a dict passed through."""
    if isinstance(ds, dict):
        return ds
    batch = ds[:]
    return {k: batch[k] for k in names}


def pairs_spearman(ds, pairs_ids: list[tuple[str, str]], scores: list[float]) -> dict[str, float]:
    """Spearman of cos(x_a, x_b) with human scores for x in e, m, em and the teacher, over id pairs."""
    ds = columns(ds)
    index = {k: i for i, k in enumerate(ds["id"])}
    missing = [p for p in pairs_ids if p[0] not in index or p[1] not in index]
    if missing:
        raise NarError(f"{len(missing)} pair members are not in the corpus (e.g. {missing[0]})")
    ia = [index[a] for a, _ in pairs_ids]
    ib = [index[b] for _, b in pairs_ids]
    e, m, t = ds["e"], ds["m"], ds["teacher"]
    out = {name: spearman(pair_cosines(v[ia], v[ib]), scores) for name, v in views(e, m).items()}
    out["teacher"] = spearman(pair_cosines(t[ia], t[ib]), scores)
    return out


def teacher_agreement(ds, max_pairs: int = 200_000) -> dict[str, float]:
    """Spearman between all pairwise proto-token cosines and the teacher's, over the whole corpus."""
    ds = columns(ds, ("e", "m", "teacher"))
    e, m, t = ds["e"], ds["m"], ds["teacher"]
    n = e.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    if iu.shape[1] > max_pairs:
        iu = iu[:, torch.randperm(iu.shape[1], generator=torch.Generator().manual_seed(0))[:max_pairs]]

    def cos_pairs(x):
        xn = F.normalize(x.float(), dim=-1)
        return (xn[iu[0]] * xn[iu[1]]).sum(-1)

    tc = cos_pairs(t)
    return {name: spearman(cos_pairs(v), tc) for name, v in views(e, m).items()}
