"""Texts reconstructed per hour: the paper's reference recipe vs nar's fitting engine, same texts, same run.

(a) reference: Paper A's recipe as written, one text at a time: layout [e, m x (N-1)], fp32, AdamW lr 1e-2,
    betas (0.9, 0.9), wd 0.01, init randn x embedding std, stop at the target accuracy or the step cap.
(b) nar: the engine's defaults (fixed BOS prefix, precision 'auto': bf16 autocast where bf16 is native, else
    fp32; continuous batching in 8 slots, texts fed in input order, ...). Further variants isolate single ideas
    (see VARIANTS) so each can be measured alone; every variant without a precision of its own runs at 'auto'.

(c) ref-bos: the reference with the same fixed BOS prefix as nar (Paper A's optimiser, one text at a time,
    fp32), so that a ratio against it measures the engine (batching, bf16, schedule, init), not the prefix.

For every (length group, variant): texts, converged, converged texts per hour of wall time, median steps and
median seconds per converged text, mean final accuracy, seconds per optimiser step. A text counts as
converged only if its argmax reproduces every token with the fit's own precision AND its returned vectors
also decode exactly when the LLM runs in fp32 (no autocast): a bf16 fit that holds only under bf16 is not a
reconstruction a user can rely on. `conv_own` counts the first criterion alone. Each variant's precision is
printed before it runs (`precision: ...`) and kept in its row.

    python -m bench.fit_throughput --quick            # 8 texts of ~16 tokens, ref-bos vs nar, 300-step cap
    python -m bench.fit_throughput                    # 16 texts of ~16 and of ~32 tokens, ref, ref-bos, nar
    python -m bench.fit_throughput --groups 16 --variants nar,lr3e-2,init-tokens   # single ideas

The last lines are `ratio vs ref: X` and `ratio vs ref-bos: Y` (for those run) and `ratio: Z`: nar's converged
texts per hour over the strongest reference run (ref-bos when run, else ref), summed over the groups run (a
run without nar and a reference: the best variant's over the first variant's).
When a reference converges no text, its ratio is a lower bound computed as if one had converged.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from bench import pick_precision, say_precision
from nar.config import FitConfig
from nar.data import bundled_texts
from nar.decode import decode_ids
from nar.fit import fit_texts, make_layout
from nar.llm import load_llm

PAPER = dict(lr=1e-2, lr_schedule="constant", warmup_steps=0, init="embed_std")  # Paper A's optimiser and init
REFERENCE = dict(PAPER, prefix="none", precision="fp32", num_slots=1, sort_by_length=False)
OLD = PAPER  # nar's engine before the schedule/init defaults (the rows measured first in docs/BENCHMARKS.md)
VARIANTS = {  # key: (description, FitConfig options on top of the defaults)
    "ref": ("reference: paper recipe, 1 text at a time, fp32", REFERENCE),
    "ref-bos": ("reference + BOS prefix (1 at a time, fp32)", {**REFERENCE, "prefix": "bos"}),
    "nar": ("nar defaults", {}),
    "nar-fp32": ("nar defaults but fp32", dict(precision="fp32")),
    "nar-sorted": ("nar, slots filled longest first", dict(sort_by_length=True)),
    "slots4": ("nar, 4 slots", dict(num_slots=4)),
    "slots16": ("nar, 16 slots", dict(num_slots=16)),
    # single ideas on top of the engine with Paper A's optimiser and init ("old"):
    "old": ("nar engine, Paper A lr 1e-2 const + randn init", OLD),
    "lr5e-3": ("old + lr 5e-3", dict(OLD, lr=5e-3)),
    "lr2e-2": ("old + lr 2e-2", dict(OLD, lr=2e-2)),
    "lr3e-2": ("old + lr 3e-2", dict(OLD, lr=3e-2)),
    "lr1e-2-cos": ("old + cosine, no warm-up", dict(OLD, lr_schedule="cosine")),
    "lr3e-2-cos": ("old + lr 3e-2 cosine, 10 warm-up", dict(OLD, lr=3e-2, lr_schedule="cosine", warmup_steps=10)),
    "lr5e-2-cos": ("old + lr 5e-2 cosine, 10 warm-up", dict(OLD, lr=5e-2, lr_schedule="cosine", warmup_steps=10)),
    "init-tokens": ("old + init at mean token embedding", dict(OLD, init="tokens")),
    "beta2-0.99": ("old + AdamW beta2 0.99", dict(OLD, beta2=0.99)),
}
GROUPS = {"16": (15, 17), "32": (28, 32), "mixed": (8, 32)}


def pick_texts(llm, group: str, k: int) -> list[str]:
    lo, hi = GROUPS[group]
    rows = [r["text"] for r in bundled_texts()]
    out = [t for t in rows if lo <= len(llm.encode(t)) <= hi]
    if len(out) < k:
        raise SystemExit(f"only {len(out)} texts with {lo}-{hi} tokens, asked for {k}")
    if group == "mixed":  # a seeded sample over the whole range, in a shuffled order
        out = random.Random(0).sample(out, k)
    return out[:k]


def run(llm, texts: list[str], key: str, max_steps: int) -> dict:
    desc, kw = VARIANTS[key]
    cfg = FitConfig(max_steps=max_steps, **kw)
    precision, why = pick_precision(cfg.precision, llm.device)
    say_precision(f"fitting, {desc}", precision, why)
    n_steps = [0]
    t0 = time.perf_counter()
    rs = fit_texts(llm, texts, cfg, on_step=lambda s: n_steps.__setitem__(0, n_steps[0] + 1))
    wall = time.perf_counter() - t0
    # the fp32 check is outside the timed wall: it is one forward pass per text, the same for every variant
    pred32 = decode_ids(llm, torch.stack([r.e for r in rs]), torch.stack([r.m for r in rs]),
                        [r.n_tokens for r in rs], make_layout(llm, cfg), precision="fp32")
    exact32 = [p == r.token_ids for p, r in zip(pred32, rs)]
    conv = [r for r, x in zip(rs, exact32) if r.converged and x]
    return {
        "variant": key, "description": desc, "texts": len(rs),
        "n_tokens_median": statistics.median(r.n_tokens for r in rs), "converged": len(conv),
        "conv_own": sum(r.converged for r in rs), "precision": precision,
        "converged_per_hour": round(3600 * len(conv) / wall, 1),
        "median_steps": statistics.median(r.steps for r in conv) if conv else None,
        "median_seconds": round(statistics.median(r.seconds for r in conv), 1) if conv else None,
        "mean_acc": round(sum(r.accuracy for r in rs) / len(rs), 4),
        "s_per_step": round(wall / max(n_steps[0], 1), 3), "wall_s": round(wall, 1),
        "steps_each": [r.steps for r in rs], "acc_each": [round(r.accuracy, 3) for r in rs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 texts of ~16 tokens, ref vs nar, 200-step cap")
    ap.add_argument("--groups", default="16,32", help="comma-separated of: " + ", ".join(GROUPS))
    ap.add_argument("--variants", default="ref,ref-bos,nar", help="comma-separated of: " + ", ".join(VARIANTS))
    ap.add_argument("--texts", type=int, default=16, help="texts per group")
    ap.add_argument("--max-steps", type=int, default=400, help="step cap per text (all variants)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.groups, args.variants, args.texts, args.max_steps = "16", "ref-bos,nar", 8, 300
    torch.set_num_threads(args.threads)
    llm = load_llm(device="cpu")
    say_precision("fp32 check of every variant's vectors", "fp32", "on purpose: the reference")
    rows = []
    for group in args.groups.split(","):
        texts = pick_texts(llm, group, args.texts)
        for key in args.variants.split(","):
            row = {"group": group, "max_steps": args.max_steps, **run(llm, texts, key, args.max_steps)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    print(f"\n{'N':5} {'variant':48} {'own':>5} {'conv':>6} {'conv/h':>7} {'med steps':>9} {'med s':>7} "
          f"{'mean acc':>8} {'s/step':>7}")
    for r in rows:
        print(f"{r['group']:5} {r['description']:48} {r['conv_own']:>5} {r['converged']:>3}/{r['texts']:<2} "
              f"{r['converged_per_hour']:>7.1f} {str(r['median_steps']):>9} {str(r['median_seconds']):>7} "
              f"{r['mean_acc']:>8.3f} {r['s_per_step']:>7.3f}")
    keys = list(dict.fromkeys(r["variant"] for r in rows))

    def rate(k: str) -> float:  # converged texts per hour of variant k, over all groups run
        rs = [r for r in rows if r["variant"] == k]
        return sum(r["converged"] for r in rs) * 3600 / sum(r["wall_s"] for r in rs)

    refs = [k for k in ("ref", "ref-bos") if k in keys]
    if not refs or "nar" not in keys:  # an ideas run: the first variant is the baseline
        if len(keys) < 2 or rate(keys[0]) == 0:
            print("ratio: n/a (run 'nar' and 'ref' or 'ref-bos' for the headline ratio, or a baseline that converges)")
            return
        best = max(keys[1:], key=rate)
        print(f"no 'nar' and reference pair: the ratio below is the best variant ({best}) over the first ({keys[0]})")
        print(f"ratio: {rate(best) / rate(keys[0]):.2f}")
        return
    ours_rate = rate("nar")
    print(f"nar {ours_rate:.1f} converged (fp32-exact) texts/hour")
    ratios = {}
    for k in refs:
        ref = [r for r in rows if r["variant"] == k]
        ref_conv, ref_wall = sum(r["converged"] for r in ref), sum(r["wall_s"] for r in ref)
        ref_rate = max(ref_conv, 1) * 3600 / ref_wall
        bound = ">= " if ref_conv == 0 else ""
        note = f" (converged 0 in {ref_wall:.0f} s; computed as if 1 had: a lower bound)" if ref_conv == 0 else ""
        print(f"{k}: {ref_rate if ref_conv else 0:.1f} converged texts/hour{note}")
        ratios[k] = f"{bound}{ours_rate / ref_rate:.2f}"
        print(f"ratio vs {k}: {ratios[k]}")
    print(f"ratio: {ratios['ref-bos' if 'ref-bos' in ratios else 'ref']}")


if __name__ == "__main__":
    main()
