"""The learning-rate schedule every trainable stage uses (proto-token fitting, encoder training).

Linear warm-up from lr/warmup to lr over `warmup` steps, then a cosine decay to `floor * lr` at step
`total` (and flat after it). Step numbers are 0-based: `warmup_cosine(0, ...)` is the first update's rate.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """The learning rate of update `step` (0-based)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return lr * (floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))
