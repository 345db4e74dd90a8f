"""Held-out token accuracy against how often each target token was drawn in training (docs/ENCODER.md: the curve
that says why the shipped encoder stops near 0.44 held-out token accuracy on a CPU budget).

    python -m studies.draws_curve [CHECKPOINT] [--epochs E] [--out results/draws_curve]

One pass of the encoder over its held-out sentences; every target token is put in a power-of-two bin by its
count c in the checkpoint's training targets, and a token drawn c x E times (E = epochs over the training set;
default from the checkpoint's own steps x batch / texts, which leaves out the steps of a run it was initialised
from: pass --epochs for fine-tunes). A least-squares line of accuracy against log10(draws) over the bins of
seen tokens, from the checkpoint's `unk_below` up (tokens it reads as unknown are never written), weighted by
their tokens, gives the draws a token would need for 0.6 and 0.9: an extrapolation, labelled as one. Writes
OUT.json and OUT.png; CHECKPOINT defaults to checkpoints/stsb-autoencoder (run `nar make-data` first for its val
data). For the shipped checkpoint pass --epochs 18.8 (9,000 + 600 steps of 16 over 8,183 sentences).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from nar.analysis.report import figure, save_figure
from nar.data import checkpoint_splits
from nar.encoder import Encoder
from nar.generate import encoder_outputs
from nar.llm import load_llm


def bin_of(count: int) -> int:
    """0 for unseen tokens, else k with 2^(k-1) <= count < 2^k."""
    return count.bit_length()


def curve(pred: list[list[int]], targets: list[list[int]], freq: Counter) -> list[dict]:
    """Per bin: its count range, median count, target tokens and the share written right at their position."""
    bins: dict[int, list[tuple[int, bool]]] = {}
    for p, t in zip(pred, targets):
        for i, tok in enumerate(t):
            bins.setdefault(bin_of(freq[tok]), []).append((freq[tok], i < len(p) and p[i] == tok))
    rows = []
    for k in sorted(bins):
        items = sorted(c for c, _ in bins[k])
        rows.append({"counts": [0, 0] if k == 0 else [2 ** (k - 1), 2 ** k - 1], "median_count": items[len(items) // 2],
                     "tokens": len(items), "token_acc": round(sum(r for _, r in bins[k]) / len(items), 4)})
    return rows


def fit_line(rows: list[dict], epochs: float, min_count: int = 1) -> tuple[float, float]:
    """Weighted least squares of token_acc = a + b * log10(median draws) over the bins whose counts start at
    `min_count` or above (tokens an encoder reads as unknown, `unk_below`, are never written whatever their draws)."""
    pts = [(math.log10(r["median_count"] * epochs), r["token_acc"], r["tokens"]) for r in rows
           if r["counts"][0] >= max(min_count, 1)]
    if len({x for x, *_ in pts}) < 2:
        raise SystemExit("fewer than two bins of seen tokens: no line to fit")
    w = sum(n for *_, n in pts)
    mx = sum(x * n for x, _, n in pts) / w
    my = sum(y * n for _, y, n in pts) / w
    b = sum(n * (x - mx) * (y - my) for x, y, n in pts) / sum(n * (x - mx) ** 2 for x, _, n in pts)
    return my - b * mx, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/stsb-autoencoder")
    ap.add_argument("--epochs", type=float, default=None,
                    help="passes over the training set (default: from the checkpoint)")
    ap.add_argument("--out", default="results/draws_curve", help="writes OUT.json and OUT.png")
    args = ap.parse_args()
    llm = load_llm()
    enc = Encoder.from_pretrained(args.checkpoint, llm=llm)
    train, held, _ = checkpoint_splits(enc.meta, llm)
    tc = enc.meta["train_config"]
    if args.epochs is None and tc.get("init_from"):
        raise SystemExit(f"{args.checkpoint} was initialised from {tc['init_from']}, whose steps its config does not "
                         "count: pass --epochs (all passes over the training set, both runs together)")
    epochs = args.epochs or tc["steps"] * tc["batch_size"] / len(train)
    freq = Counter(tok for t in train.token_ids for tok in t)
    pred = encoder_outputs(enc, llm, held.sources, enc.layout, "auto", bool(enc.meta.get("stop_at_eos")))
    rows = curve(pred, held.token_ids, freq)
    first = max(enc.cfg.unk_below, 1)  # bins from here up are fitted and drawn as fitted
    a, b = fit_line(rows, epochs, first)
    need = {str(acc): round(10 ** ((acc - a) / b)) for acc in (0.6, 0.9)} if b > 0 else {}
    res = {"checkpoint": args.checkpoint, "held_out_texts": len(held), "train_texts": len(train), "epochs": epochs,
           "bins": rows, "fit": {"bins_from_count": first, "intercept": round(a, 4), "per_tenfold_draws": round(b, 4),
                                 "draws_needed_extrapolated": need}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=1) + "\n")

    plt = figure()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    seen = [r for r in rows if r["median_count"]]
    xs = [r["median_count"] * epochs for r in seen]
    for fitted, colour, label in ((True, "C0", "held-out bins (area ~ tokens)"),
                                  (False, "gray", f"bins holding tokens read as unknown (< {first}), not fitted")):
        part = [(x, r) for x, r in zip(xs, seen) if (r["counts"][0] >= first) == fitted]
        if part:
            ax.scatter([x for x, _ in part], [r["token_acc"] for _, r in part], color=colour,
                       s=[8 + r["tokens"] / 20 for _, r in part], label=label)
    hi = max(xs + [10 ** ((0.9 - a) / b)] if b > 0 else xs)
    line_x = [min(xs), hi]
    ax.plot(line_x, [a + b * math.log10(x) for x in line_x], "--",
            label=f"fit: +{b:.2f} per tenfold (past the data: extrapolated)")
    ax.axhline(0.6, color="gray", lw=0.8, label="the bar (0.6)")
    unseen = next((r for r in rows if not r["median_count"]), None)
    if unseen:
        ax.annotate(f"never seen: {unseen['token_acc']:.3f} ({unseen['tokens']} tokens)", (0.02, 0.95),
                    xycoords="axes fraction", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"training draws of the target token (occurrences x {epochs:.1f} epochs)")
    ax.set_title(f"{Path(args.checkpoint).name}: {len(held)} held-out sentences", fontsize=9)
    save_figure(fig, f"{args.out}.png", ylabel="held-out token accuracy")
    print(json.dumps(res["fit"]))


if __name__ == "__main__":
    main()
