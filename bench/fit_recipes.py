"""Fitting recipes side by side on the real model: steps and seconds to reach accuracy 1.0.

Fits the same texts (8 of ~16 tokens and 8 of ~32 tokens from nar/assets/texts.jsonl) with each variant,
8 at a time in one padded batch, and reports per variant and length group: how many reached the
target within the step cap, median steps and median seconds of those that did, mean final accuracy,
seconds per optimiser step, and the one-pass fp32 re-decode accuracy of the returned vectors. The bf16 variants
run only where bf16 is native (`nar.llm.native_bf16`) or with --force-bf16; elsewhere they are skipped with the
reason printed (emulated bf16 is 6-70x slower than fp32 and would only time the emulation).

    python -m bench.fit_recipes                      # the full matrix (~30-40 min on 2 cores)
    python -m bench.fit_recipes --quick              # 4 texts of ~16 tokens: paper fp32 vs bos at 'auto' (< 10 min)

The last line is `ratio: X`: converged texts per hour of the sink-prefix recipe at the precision 'auto' picks
here (bf16 where native, else fp32) over the paper-as-written (no prefix, fp32) recipe, both measured in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench import FORCE_HELP, pick_precision, say_precision
from nar.config import FitConfig
from nar.data import bundled_texts
from nar.decode import decode_ids, token_accuracy
from nar.fit import fit_texts, make_layout
from nar.llm import load_llm

PAPER = dict(lr=1e-2, lr_schedule="constant", warmup_steps=0, init="embed_std", sort_by_length=False)
VARIANTS = {  # key: (name in the table, FitConfig options); Paper A's optimiser and init throughout
    "paper-fp32": ("paper (no prefix), fp32", dict(PAPER, prefix="none", precision="fp32")),
    "paper-bf16": ("paper (no prefix), bf16", dict(PAPER, prefix="none", precision="bf16")),
    "bos-fp32": ("bos prefix, fp32", dict(PAPER, prefix="bos", precision="fp32")),
    "bos-bf16": ("bos prefix, bf16", dict(PAPER, prefix="bos", precision="bf16")),
}


def pick_texts(llm, lo: int, hi: int, k: int) -> list[str]:
    rows = bundled_texts()
    out = [r["text"] for r in rows if lo <= len(llm.encode(r["text"])) <= hi]
    if len(out) < k:
        raise SystemExit(f"only {len(out)} texts with {lo}-{hi} tokens")
    return out[:k]


def run(llm, texts, name, cfg) -> dict:
    t0 = time.perf_counter()
    steps_total = [0]
    rs = fit_texts(llm, texts, cfg, on_step=lambda s: steps_total.__setitem__(0, steps_total[0] + 1))
    wall = time.perf_counter() - t0
    pred = decode_ids(llm, torch.stack([r.e for r in rs]), torch.stack([r.m for r in rs]),
                      [r.n_tokens for r in rs], make_layout(llm, cfg), precision="fp32")
    conv = [r for r in rs if r.converged]
    return {
        "variant": name, "texts": len(rs), "n_tokens_median": statistics.median(r.n_tokens for r in rs),
        "converged": len(conv),
        "median_steps": statistics.median(r.steps for r in conv) if conv else None,
        "median_seconds": round(statistics.median(r.seconds for r in conv), 1) if conv else None,
        "mean_acc": round(sum(r.accuracy for r in rs) / len(rs), 4),
        "fp32_redecode_exact": sum(token_accuracy(p, r.token_ids) == 1.0 for p, r in zip(pred, rs)),
        "wall_s": round(wall, 1), "s_per_step": round(wall / max(steps_total[0], 1), 3),
        "converged_per_hour": round(3600 * len(conv) / wall, 1),
        "steps_each": [r.steps for r in rs], "acc_each": [round(r.accuracy, 3) for r in rs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--variants", default=None, help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--groups", default="~16,~32", help="length groups to run: ~16 and/or ~32")
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = load_llm(device="cpu")
    groups = {g: r for g, r in {"~16": (14, 18), "~32": (28, 36)}.items() if g in args.groups.split(",")}
    variants = {n: VARIANTS[n] for n in args.variants.split(",")} if args.variants else dict(VARIANTS)
    auto, why_auto = pick_precision("auto", llm.device)
    ours = f"bos-{auto}"  # the headline: nar's prefix at the precision 'auto' picks here
    k = 8
    if args.quick:
        groups, k = {"~16": (14, 18)}, 4
        variants = {n: VARIANTS[n] for n in ("paper-fp32", ours)}
    say_precision("fp32 re-decode check of every variant", "fp32", "on purpose: the reference")
    for key, (name, kw) in list(variants.items()):
        prec, why = pick_precision(kw["precision"], llm.device, force_bf16=args.force_bf16)
        if key == ours:
            why = f"{why_auto}; the headline variant"
        say_precision(f"fitting, {name}", prec, why)
        if prec is None:
            del variants[key]
    rows = []
    for gname, (lo, hi) in groups.items():
        texts = pick_texts(llm, lo, hi, k)
        for name, kw in variants.values():
            cfg = FitConfig(max_steps=args.max_steps, num_slots=k, **kw)
            row = dict(run(llm, texts, name, cfg), group=gname)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'group':6} {'variant':26} {'conv':>5} {'med steps':>9} {'med s':>7} {'mean acc':>8} "
          f"{'s/step':>7} {'conv/h':>7}")
    for r in rows:
        print(f"{r['group']:6} {r['variant']:26} {r['converged']:>2}/{r['texts']:<2} {str(r['median_steps']):>9} "
              f"{str(r['median_seconds']):>7} {r['mean_acc']:>8.3f} {r['s_per_step']:>7.3f} "
              f"{r['converged_per_hour']:>7.1f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if "paper-fp32" not in variants or ours not in variants:
        print(f"ratio: n/a (run paper-fp32 and {ours} for the headline)")
        return
    base = sum(r["converged_per_hour"] for r in rows if r["variant"] == VARIANTS["paper-fp32"][0])
    rate = sum(r["converged_per_hour"] for r in rows if r["variant"] == VARIANTS[ours][0])
    print(f"headline: {VARIANTS[ours][0]} over {VARIANTS['paper-fp32'][0]}")
    print(f"ratio: {rate / base:.2f}" if base > 0 else f"ratio: inf (baseline converged none; ours {rate:.1f}/h)")


if __name__ == "__main__":
    main()
