"""How stable is a solution? Reconstruction accuracy under noise on e, m or both (Paper B, Fig. 4).

Noise of intensity alpha on a vector x (D dims), each with expected norm alpha * |x|:
  gaussian:  x + alpha * |x| / sqrt(D) * g,             g ~ N(0, I)
  uniform:   x + alpha * |x| / sqrt(D) * sqrt(3) * u,   u ~ U(-1, 1)^D
  direction: x + alpha * |x| * g / |g|                  (exactly that norm, random direction)
Also: does the noisy e still find its own text first in the e-space index?
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from nar.analysis.report import figure, save_figure, write_report
from nar.config import StabilityConfig
from nar.decode import decode_ids, token_accuracy
from nar.llm import FrozenLLM, Layout

NOISES = ("gaussian", "uniform", "direction")
TARGETS = ("e", "m", "both")


def add_noise(x: torch.Tensor, alpha: float, kind: str, g: torch.Generator) -> torch.Tensor:
    """x: (B, D); returns a noisy copy."""
    d = x.shape[-1]
    norm = x.norm(dim=-1, keepdim=True)
    if kind == "gaussian":
        delta = torch.randn(x.shape, generator=g) * norm / math.sqrt(d)
    elif kind == "uniform":
        delta = (torch.rand(x.shape, generator=g) * 2 - 1) * math.sqrt(3) * norm / math.sqrt(d)
    elif kind == "direction":
        r = torch.randn(x.shape, generator=g)
        delta = r / r.norm(dim=-1, keepdim=True) * norm
    else:
        raise ValueError(kind)
    return x + alpha * delta


def stability(llm: FrozenLLM, e: torch.Tensor, m: torch.Tensor, token_ids: list[list[int]], layout: Layout, *,
              alphas=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), noises=NOISES, targets=TARGETS, repeats: int = 3,
              precision: str = "fp32", seed: int = 0, index=None, ids: list[str] | None = None) -> list[dict]:
    """Mean token accuracy (and exact-match rate) for every (noise, target, alpha); with an e-space
    `index` and the rows' `ids`, also the fraction of noisy e whose nearest neighbour is its own text."""
    g = torch.Generator().manual_seed(seed)
    n = [len(t) for t in token_ids]
    rows = []
    for noise in noises:
        for target in targets:
            for alpha in alphas:
                accs, exact, self_nn = [], [], []
                for _ in range(repeats if alpha > 0 else 1):
                    en = add_noise(e, alpha, noise, g) if target in ("e", "both") else e
                    mn = add_noise(m, alpha, noise, g) if target in ("m", "both") else m
                    pred = decode_ids(llm, en, mn, n, layout, precision=precision)
                    a = [token_accuracy(p, t) for p, t in zip(pred, token_ids)]
                    accs += a
                    exact += [x == 1.0 for x in a]
                    if index is not None and target in ("e", "both"):
                        q = (en / en.norm(dim=-1, keepdim=True)).numpy()
                        _, found = index.search(q, 1)
                        self_nn += [f[0] == i for f, i in zip(found, ids)]
                rows.append({"noise": noise, "target": target, "alpha": alpha, "token_acc": float(np.mean(accs)),
                             "exact": float(np.mean(exact)),
                             "self_nn": float(np.mean(self_nn)) if self_nn else None})
    return rows


def plot_stability(rows: list[dict], path: str | Path) -> None:
    plt = figure()
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    fig, axes = plt.subplots(1, len(noises), figsize=(4.5 * len(noises), 3.6), sharey=True, squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for target in dict.fromkeys(r["target"] for r in rows):
            pts = [(r["alpha"], r["token_acc"]) for r in rows if r["noise"] == noise and r["target"] == target]
            ax.plot(*zip(*pts), marker="o", label=f"noise on {target}")
        ax.set_title(f"{noise} noise")
        ax.set_xlabel("alpha (noise norm / vector norm)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("token accuracy")
    axes[0][0].legend()
    save_figure(fig, path)


def run_stability(corpus_path: str | Path, out_dir: str | Path, cfg: StabilityConfig = StabilityConfig(), *,
                  llm=None) -> dict:
    """The `nar analyze stability` job on the converged rows of a corpus."""
    from nar.analysis.common import corpus_and_sample
    from nar.index import load_index

    llm, layout, precision, s = corpus_and_sample(corpus_path, llm, cfg.sample, cfg.seed)
    index = load_index(corpus_path, "e", "flat")
    rows = stability(llm, s["e"], s["m"], s["token_ids"], layout, alphas=cfg.alphas, repeats=cfg.repeats,
                     precision=precision, seed=cfg.seed, index=index, ids=s["id"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_stability(rows, out / "stability.png")
    summary = {"corpus": str(corpus_path), "config": cfg.to_dict(), "texts": len(s["id"])}
    files = write_report(out, "stability", summary, rows)
    return {**summary, "rows": rows, "files": {**files, "png": str(out / "stability.png")}}
