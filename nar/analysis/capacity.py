"""How many tokens can two proto-tokens carry? Accuracy vs N (Paper A's capacity curve).

Each long text is cut to its first N tokens for every N of the grid; all (text, N) targets are fitted
with the same recipe (continuous batching), and for each text the largest N reconstructed at
>= threshold (default 0.99) token accuracy is reported.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from nar.analysis.report import figure, save_figure, write_report
from nar.config import CapacityConfig, FitConfig
from nar.fit import FitItem, fit_stream
from nar.llm import FrozenLLM


def capacity(llm: FrozenLLM, texts: list[str], ns: list[int], cfg: FitConfig, threshold: float = 0.99,
             on_result=None) -> list[dict]:
    items = []
    for i, t in enumerate(texts):
        ids = llm.encode(t)
        for n in ns:
            if n <= len(ids):
                items.append(FitItem(key=f"{i}/{n}", ids=ids[:n], init_key=f"{t}#{n}"))
    rows = []
    for r in fit_stream(llm, items, cfg):
        i, n = (int(x) for x in r.key.split("/"))
        rows.append({"text": i, "n": n, "accuracy": r.accuracy, "steps": r.steps, "seconds": round(r.seconds, 1),
                     "reconstructed": r.accuracy >= threshold})
        if on_result:
            on_result(r)
    return sorted(rows, key=lambda x: (x["text"], x["n"]))


def largest_n(rows: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        if r["reconstructed"]:
            out[r["text"]] = max(out.get(r["text"], 0), r["n"])
        else:
            out.setdefault(r["text"], 0)
    return out


def plot_capacity(rows: list[dict], path: str | Path, threshold: float) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted({r["text"] for r in rows}):
        pts = [(r["n"], r["accuracy"]) for r in rows if r["text"] == t]
        ax.plot(*zip(*pts), marker="o", label=f"text {t}")
    ax.axhline(threshold, color="grey", ls=":", label=f"{threshold}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (tokens)")
    save_figure(fig, path, ylabel="token accuracy")


def run_capacity(out_dir: str | Path, cfg: CapacityConfig = CapacityConfig(), *, llm: FrozenLLM,
                 texts: list[str] | None = None, fit: FitConfig | None = None, on_result=None) -> dict:
    """The `nar analyze capacity` job: `cfg.texts` long bundled texts (or `texts`), fitted with cfg's fit
    settings (or `fit`) at every N of cfg.ns."""
    from nar.data import long_texts

    ns, threshold, fit = list(cfg.ns), cfg.threshold, fit or cfg.fit_config()
    texts = texts or long_texts(llm, cfg.texts, max(ns))
    rows = capacity(llm, texts, ns, fit, threshold, on_result=on_result)
    best = largest_n(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_capacity(rows, out / "capacity.png", threshold)
    summary = {"llm": llm.fingerprint, "config": cfg.to_dict(), "texts": len(texts), "ns": ns, "threshold": threshold,
               "fit_config": fit.to_dict(), "largest_n_per_text": best,
               "largest_n_median": statistics.median(best.values()) if best else None,
               "largest_n_max": max(best.values()) if best else None}
    files = write_report(out, "capacity", summary, rows)
    return {**summary, "rows": rows, "files": {**files, "png": str(out / "capacity.png")}}
