"""The losses of proto-token space (formulas in docs/METHOD.md).

- reconstruction: the cross-entropy of the target tokens from ONE forward pass of the frozen LLM on
  [prefix][e][m x ...]; the one loss of fitting, encoder training, the analyses and the benches;
- relational distillation (RD): the cosine-similarity matrix of the proto-tokens is pulled towards the
  teacher's matrix for the same texts (only relations, never positions), optionally against a bank of
  already-finished texts so every batch is measured in one frame;
- anchor loss: a fixed projection of the proto-token is pulled towards the teacher embedding itself;
- frame pin (a constraint, not a loss): e's component in the teacher subspace is held at the projected
  teacher embedding for the whole fit, and only the rest of e (and m) is optimised.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nar.errors import NarError
from nar.space import PROTO_SPACES, proto_space

IGNORE = -100
"""Target value of the padding after a text's end (ignored by the cross-entropy)."""


def pad_targets(targets: Sequence[Sequence[int] | torch.Tensor], device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """(B, max N) long tensor of the target ids, right-padded with IGNORE."""
    n = max(len(t) for t in targets)
    tgt = torch.full((len(targets), n), IGNORE, dtype=torch.long, device=device)
    for j, t in enumerate(targets):
        tgt[j, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return tgt


@dataclass
class Reconstruction:
    """Per-text figures of one teacher-forced pass. All (B,)."""

    ce: torch.Tensor
    """Each text's mean cross-entropy over its own tokens (differentiable)."""
    acc: torch.Tensor
    """Each text's token accuracy of the argmax (no gradient)."""
    n_tokens: torch.Tensor
    """Each text's number of target tokens."""

    def token_mean(self) -> torch.Tensor:
        """The cross-entropy of every target token of the batch, pooled (long texts weigh more)."""
        return (self.ce * self.n_tokens).sum() / self.n_tokens.sum()

    def token_sum(self) -> torch.Tensor:
        """The summed cross-entropy of every target token of the batch (a distributed step divides it by the
        global batch's token count, so that a rank's share of the gradient does not depend on its slice)."""
        return (self.ce * self.n_tokens).sum()


def reconstruction_loss(llm, e: torch.Tensor, m: torch.Tensor, targets: Sequence[Sequence[int] | torch.Tensor],
                        layout, precision: str = "fp32", context=None, margin: float = 0.0) -> Reconstruction:
    """Cross-entropy and accuracy of each target from one padded forward pass of the frozen LLM.

    e: (B, D) or (B, k, D); m: (B, D) or (1, D) shared; context: an in-context encoder's `nar.llm.Context`;
    targets: B id sequences (lengths may differ: right padding needs no attention mask, attention being causal).
    precision 'bf16' autocasts the LLM's matmuls. A text's loss does not depend on its batch-mates. margin > 0:
    `acc` counts a token only when its logit beats every other token's by at least `margin` (a solution that
    survives other arithmetic, e.g. bf16 at another batch shape); 0: the argmax."""
    tgt = pad_targets(targets, e.device)
    with llm.autocast(precision):
        logits = llm.proto_logits(e, m, tgt.shape[1], layout, context)
    logits = logits.float()
    valid = tgt != IGNORE
    lengths = valid.sum(1)
    ce = F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=IGNORE, reduction="none").sum(1) / lengths
    with torch.no_grad():
        if margin > 0:
            safe = tgt.clamp(min=0)[..., None]
            gap = logits.gather(-1, safe)[..., 0] - logits.scatter(-1, safe, float("-inf")).max(-1).values
            hit = gap >= margin
        else:
            hit = logits.argmax(-1) == tgt
    acc = (hit & valid).sum(1) / lengths
    return Reconstruction(ce, acc, lengths)


def relational_loss(P: torch.Tensor, T: torch.Tensor, bank_P: torch.Tensor | None = None,
                    bank_T: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference between proto-token and teacher cosine similarities.

    P: (B, Dp) proto-tokens, T: (B, Dt) teacher embeddings of the same texts; optional bank_P (K, Dp)
    and bank_T (K, Dt) of finished texts (constants). Pairs: all i != j inside the batch, plus every
    (batch, bank) pair. Zero iff the similarity matrices agree on those pairs.
    """
    Pn, Tn = F.normalize(P.float(), dim=-1), F.normalize(T.float(), dim=-1)
    b = P.shape[0]
    diffs = []
    if b > 1:
        off = ~torch.eye(b, dtype=torch.bool, device=P.device)
        diffs.append(((Pn @ Pn.T) - (Tn @ Tn.T))[off])
    if bank_P is not None and bank_P.shape[0] > 0:
        Bp = F.normalize(bank_P.to(P.device).float(), dim=-1)
        Bt = F.normalize(bank_T.to(P.device).float(), dim=-1)
        diffs.append(((Pn @ Bp.T) - (Tn @ Bt.T)).flatten())
    if not diffs:
        return P.sum() * 0.0
    return torch.cat(diffs).pow(2).mean()


def teacher_projection(teacher_dim: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A fixed (teacher_dim, dim) matrix: the one frame shared by the whole corpus.

    t @ Q maps a teacher embedding into proto-token space (teacher-aligned init); p @ Q.T maps a
    proto-token back (anchor loss). When teacher_dim <= dim the rows are orthonormal, so teacher
    cosines are preserved exactly; otherwise (an LLM narrower than the teacher) the columns are, and
    cosines are preserved approximately (a random projection).
    """
    g = torch.Generator().manual_seed(seed)
    if teacher_dim <= dim:
        q, _ = torch.linalg.qr(torch.randn(dim, teacher_dim, generator=g))
        return q.T.contiguous()
    q, _ = torch.linalg.qr(torch.randn(teacher_dim, dim, generator=g))
    return q.contiguous()


def anchor_loss(P: torch.Tensor, T: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos(P Q^T, T)). P: (B, D); T: (B, Dt); Q: (Dt, D) from `teacher_projection`."""
    return (1 - F.cosine_similarity(P.float() @ Q.to(P.device).T, T.to(P.device).float(), dim=-1)).mean()


class FramePin:
    """A hard teacher frame for e (`fit_stream`'s pin_e): e's component in the row space of Q is set to
    scale * (u Q), u the text's unit teacher vector (or its unit sketch u = t S / |t S| through a fixed
    (Dt, k) matrix S with orthonormal columns, when only k < Dt coordinates are pinned); the rest of e is kept.
    Applied to e at the start of a fit and after every update (projected AdamW), so the optimiser moves only
    e's complement and m.

    With Q's rows orthonormal, e_a . e_b = scale^2 cos(u_a, u_b) + (complement dot product): e keeps the
    teacher's cosines (exactly, or as a random sketch keeps them) as long as the fitted complement stays small
    beside the pinned part."""

    def __init__(self, Q: torch.Tensor, scale: float, sketch: torch.Tensor | None = None):
        if Q.shape[0] >= Q.shape[1]:
            raise NarError(f"a frame pin needs a teacher narrower than the LLM (teacher {Q.shape[0]} dims, "
                           f"LLM {Q.shape[1]}): it would leave no free coordinate of e")
        if scale <= 0:
            raise NarError("the frame pin's scale must be > 0")
        if sketch is not None and sketch.shape[1] != Q.shape[0]:
            raise NarError(f"sketch maps to {sketch.shape[1]} dims, the pinned subspace has {Q.shape[0]}")
        self.Q, self.scale, self.sketch = Q, scale, sketch

    def target(self, T: torch.Tensor) -> torch.Tensor:
        """The pinned component of e for teacher vectors T (B, Dt): (B, D)."""
        U = T.float() if self.sketch is None else T.float() @ self.sketch.to(T.device)
        return self.scale * (F.normalize(U, dim=-1) @ self.Q.to(T.device))

    def __call__(self, E: torch.Tensor, items) -> torch.Tensor:
        """E (B, D) -> E with its pinned-subspace component replaced; items carry payload["teacher"]."""
        Q = self.Q.to(E.device, E.dtype)
        T = torch.stack([it.payload["teacher"] for it in items]).to(E.device)
        return E - (E @ Q.T) @ Q + self.target(T).to(E.dtype)


def frame_pin(teacher_dim: int, dim: int, scale: float, dims: int = 0, seed: int = 0) -> FramePin:
    """The corpus's frame pin: all teacher coordinates (dims 0 or >= teacher_dim) through the corpus's projection
    `teacher_projection(teacher_dim, dim, seed)`, or a fixed random `dims`-dim sketch of them; a sketch never
    takes more than half of the LLM's width `dim`."""
    if dims > 0:
        dims = min(dims, dim // 2)
    if dims <= 0 or dims >= teacher_dim:
        return FramePin(teacher_projection(teacher_dim, dim, seed), scale)
    return FramePin(teacher_projection(dims, dim, seed), scale, sketch=teacher_projection(teacher_dim, dims, seed + 1))


class MemoryBank:
    """The last `size` finished proto-tokens with their teacher embeddings (constants for RD)."""

    def __init__(self, size: int):
        self.size = size
        self._p: deque[torch.Tensor] = deque(maxlen=max(size, 1))
        self._t: deque[torch.Tensor] = deque(maxlen=max(size, 1))

    def add(self, p: torch.Tensor, t: torch.Tensor) -> None:
        if self.size > 0 and torch.isfinite(p).all():
            self._p.append(p.detach().float().cpu())
            self._t.append(t.detach().float().cpu())

    def __len__(self) -> int:
        return len(self._p) if self.size > 0 else 0

    def tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if len(self) == 0:
            return None, None
        return torch.stack(list(self._p)), torch.stack(list(self._t))


class TeacherRegulariser:
    """The extra loss passed to `nar.fit.fit_stream`: rd_weight * RD + anchor_weight * anchor.

    Each item's payload must carry "teacher": (Dt,) unit-norm tensor.
    """

    def __init__(self, rd_weight: float, anchor_weight: float, rd_target: str, Q: torch.Tensor | None,
                 bank: MemoryBank | None = None):
        if rd_target not in PROTO_SPACES:
            raise NarError(f"rd target must be one of {PROTO_SPACES}, not {rd_target!r}")
        self.rd_weight, self.anchor_weight, self.rd_target = rd_weight, anchor_weight, rd_target
        self.Q, self.bank = Q, bank
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, E: torch.Tensor, M: torch.Tensor, items) -> dict[str, torch.Tensor]:
        keys = tuple(it.key for it in items)
        T = self._cache.get(keys)
        if T is None:  # the set of co-resident texts changes only when a slot is refilled
            T = torch.stack([it.payload["teacher"] for it in items]).to(E.device)
            self._cache = {keys: T}
        out: dict[str, torch.Tensor] = {}
        if self.rd_weight > 0:
            bp, bt = self.bank.tensors() if self.bank is not None else (None, None)
            out["rd_loss"] = self.rd_weight * relational_loss(proto_space(E, M, self.rd_target), T, bp, bt)
        if self.anchor_weight > 0:
            out["anchor_loss"] = self.anchor_weight * anchor_loss(E, T, self.Q)
        return out
