"""How much do the m positions attend to e (and to the fixed prefix) while reconstructing? (Paper B, Figs. 1-3)

For each converged text: one forward pass with eager attention; for every layer and head, the mean over
the m query positions of the attention weight on the e position (and on the prefix, the attention
sink). Averaged over texts: two (layers x heads) heat maps.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from nar.analysis.report import figure, save_figure, write_report
from nar.config import AttentionConfig
from nar.llm import FrozenLLM, Layout


@contextmanager
def eager_attention(llm: FrozenLLM):
    """Attention weights are only returned by the eager implementation; switch for the duration."""
    model = llm.model
    before = getattr(model.config, "_attn_implementation", None)
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before and before != "eager":
            model.set_attn_implementation(before)


@torch.no_grad()
def attention_to_e(llm: FrozenLLM, e: torch.Tensor, m: torch.Tensor, n_tokens: list[int], layout: Layout
                   ) -> dict[str, np.ndarray]:
    """{"e": (layers, heads), "prefix": (layers, heads) or None, "per_text_e": (B, layers)} mean weights."""
    p = len(layout.prefix_ids)
    to_e, to_prefix, per_text = [], [], []
    with eager_attention(llm):
        for i in range(e.shape[0]):
            n = n_tokens[i]
            x = llm.proto_inputs(e[i:i + 1].to(llm.device), m[i:i + 1].to(llm.device), n, layout).to(llm.dtype)
            att = llm.model(inputs_embeds=x, output_attentions=True, use_cache=False).attentions
            a = torch.stack([t[0].float().cpu() for t in att])  # (layers, heads, L, L)
            q = slice(p + 1, a.shape[-1])  # the m positions
            to_e.append(a[:, :, q, p].mean(-1))
            per_text.append(a[:, :, q, p].mean(-1).mean(-1))
            if p:
                to_prefix.append(a[:, :, q, :p].sum(-1).mean(-1))
    return {"e": torch.stack(to_e).mean(0).numpy(),
            "prefix": torch.stack(to_prefix).mean(0).numpy() if to_prefix else None,
            "per_text_e": torch.stack(per_text).numpy()}


def plot_heatmaps(maps: dict[str, np.ndarray], path: str | Path) -> None:
    plt = figure()
    keys = [k for k in ("e", "prefix") if maps.get(k) is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        im = ax.imshow(maps[k], aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(f"attention from m positions to {'e' if k == 'e' else 'the prefix (sink)'}")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def run_attention(corpus_path: str | Path, out_dir: str | Path, cfg: AttentionConfig = AttentionConfig(), *,
                  llm=None) -> dict:
    """The `nar analyze attention` job on the converged rows of a corpus."""
    from nar.analysis.common import corpus_and_sample

    llm, layout, _, s = corpus_and_sample(corpus_path, llm, cfg.sample, cfg.seed)
    maps = attention_to_e(llm, s["e"], s["m"], [len(t) for t in s["token_ids"]], layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_heatmaps(maps, out / "attention.png")
    e_map = maps["e"]
    rows = [{"layer": li, "mean_to_e": float(e_map[li].mean()), "max_head_to_e": float(e_map[li].max()),
             "argmax_head": int(e_map[li].argmax()),
             "mean_to_prefix": float(maps["prefix"][li].mean()) if maps["prefix"] is not None else None}
            for li in range(e_map.shape[0])]
    summary = {"corpus": str(corpus_path), "config": cfg.to_dict(), "texts": len(s["id"]),
               "layers": int(e_map.shape[0]), "heads": int(e_map.shape[1]), "mean_to_e": float(e_map.mean()),
               "uniform_baseline": float(np.mean([1.0 / (len(layout.prefix_ids) + 1 + k)
                                                  for t in s["token_ids"] for k in range(1, len(t))])),
               "mean_to_prefix": float(maps["prefix"].mean()) if maps["prefix"] is not None else None,
               "heatmap_e": e_map.round(4).tolist()}
    files = write_report(out, "attention", summary, rows)
    return {**summary, "rows": rows, "files": {**files, "png": str(out / "attention.png")}}
