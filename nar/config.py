"""One frozen dataclass per stage. CLI options map one-to-one onto these fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from nar.errors import NarError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise NarError(msg)


@dataclass(frozen=True)
class FitConfig:
    """How proto-tokens are fitted to target texts (Paper A's recipe plus the options we measured)."""

    max_steps: int = 500
    """Optimiser steps per text before giving up (the best vectors seen are kept)."""
    target_acc: float = 1.0
    """Token accuracy at which a text stops early (1.0 = argmax reproduces every token)."""
    lr: float = 1e-2
    """AdamW learning rate (Paper A: 1e-2)."""
    beta1: float = 0.9
    """AdamW beta1 (Paper A: 0.9)."""
    beta2: float = 0.9
    """AdamW beta2 (Paper A: 0.9, not the usual 0.999)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on e and m (Paper A: 0.01)."""
    init: str = "embed_std"
    """'embed_std': randn scaled by the std of the LLM's embedding matrix; 'randn': plain N(0, 1)."""
    prefix: str = "bos"
    """Fixed, untrained tokens before e: 'bos' (the tokenizer's BOS), 'none', or literal text."""
    first: str = "e"
    """Which position predicts the first target token: 'e' (its own output) or 'm' (the first m)."""
    share_m: bool = False
    """One m shared by every text of the run (fitted jointly, stopped as a group); else per-text m."""
    precision: str = "bf16"
    """'bf16': bfloat16 autocast for the LLM's matmuls (proto-tokens stay fp32); 'fp32': none."""
    num_slots: int = 8
    """Texts fitted at once as one padded batch; a finished slot is refilled with the next text."""
    max_tokens: int = 64
    """Longest target, in tokens, that is accepted."""
    append_eos: bool = False
    """Append the tokenizer's EOS to each target, so decoding can find where the text ends."""
    seed: int = 0
    """Seed of the initial vectors; each text's init depends only on (seed, text key)."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps must be >= 1")
        _check(0.0 < self.target_acc <= 1.0, "target_acc must be in (0, 1]")
        _check(self.lr > 0, "lr must be > 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(self.init in ("embed_std", "randn"), "init must be 'embed_std' or 'randn'")
        _check(self.first in ("e", "m"), "first must be 'e' or 'm'")
        _check(self.precision in ("bf16", "fp32"), "precision must be 'bf16' or 'fp32'")
        _check(self.num_slots >= 1, "num_slots must be >= 1")
        _check(self.max_tokens >= 1, "max_tokens must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
