"""Proto-token spaces, defined once: what 'e', 'm', 'em' and 'teacher' vectors are wherever they are compared
(relational distillation, the FAISS index, the analyses), and how agreement with the teacher is measured.

    e        the e vector
    m        the m vector
    em       [e/|e|; m/|m|] / sqrt(2): the two halves weigh the same whatever their norms, and the cosine
             of two such vectors is the mean of the e and m cosines
    teacher  the stored sentence embedding of the text

Similarity is always cosine; `unit_rows` gives the L2-normalised rows an inner-product index needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nar.errors import NarError

PROTO_SPACES = ("e", "m", "em")
SPACES = (*PROTO_SPACES, "teacher")


def proto_space(e: torch.Tensor, m: torch.Tensor, space: str) -> torch.Tensor:
    """The vectors of a proto-token space: e (B, D), m (B, D), or em (B, 2D). m may be (1, D) when shared."""
    if space == "e":
        return e
    m = m.expand_as(e)
    if space == "m":
        return m
    if space == "em":
        return torch.cat([unit_rows(e), unit_rows(m)], dim=-1) / math.sqrt(2)
    raise NarError(f"space must be one of {PROTO_SPACES}, not {space!r}")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32)."""
    return F.normalize(x.float(), dim=-1, eps=1e-12)


def space_vectors(e, m, teacher, space: str) -> torch.Tensor:
    """(N, d) unit rows of a space, from the corpus columns (torch tensors or numpy arrays)."""
    if space == "teacher":
        return unit_rows(torch.as_tensor(teacher))
    if space not in PROTO_SPACES:
        raise NarError(f"space must be one of {SPACES}, not {space!r}")
    return unit_rows(proto_space(torch.as_tensor(e).float(), torch.as_tensor(m).float(), space))


def pair_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(list(x), list(y)).statistic)


def teacher_agreement(e: torch.Tensor, m: torch.Tensor, teacher: torch.Tensor, max_pairs: int = 200_000
                      ) -> dict[str, float]:
    """Spearman between all pairwise cosines in each proto-token space and the teacher's (a seeded sample
    of at most max_pairs pairs): how well the space mirrors meaning, corpus-wide."""
    n = e.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    if iu.shape[1] > max_pairs:
        iu = iu[:, torch.randperm(iu.shape[1], generator=torch.Generator().manual_seed(0))[:max_pairs]]

    def cos_pairs(x):
        xn = unit_rows(x)
        return (xn[iu[0]] * xn[iu[1]]).sum(-1)

    tc = cos_pairs(teacher)
    return {s: spearman(cos_pairs(proto_space(e, m, s)), tc) for s in PROTO_SPACES}
