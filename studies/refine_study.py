"""Refinement passes on the seq2seq story task (docs/ENCODER.md): how many Jacobi passes of the frozen LLM does
each draft need to reach the LLM's own greedy continuation, and how close is it after k passes?

    python -m studies.refine_study [--checkpoint out/study/story-ctx/last] [--limit 500] [--passes 17]

Drafts, all N = 16 tokens, for the held-out prompts of the checkpoint's run:
  pad       the pad token everywhere: plain Jacobi decoding (Santilli et al. 2023), no draft at all
  mode      the most frequent training-target token at each position
  nearest   the continuation of the nearest training prompt (MiniLM teacher, cosine)
  encoder   the checkpoint's one pass (source -> encoder -> proto-tokens -> one pass of the frozen LLM)
Reference: each prompt's fixed point (= the LLM's greedy reply; checked against the pairs file's targets).
Writes out/refine/results.json and docs/refine_passes.png; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="out/study/story-ctx/last")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--passes", type=int, default=17)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--out", default="out/refine")
    ap.add_argument("--plot", default="docs/refine_passes.png")
    a = ap.parse_args()

    from nar.data import checkpoint_splits
    from nar.decode import token_accuracy
    from nar.encoder import Encoder
    from nar.evaluate import nearest_neighbour, position_mode
    from nar.generate import encoder_outputs
    from nar.llm import load_llm
    from nar.pairs import prompt_ids
    from nar.refine import jacobi
    from nar.teacher import load_teacher

    torch.manual_seed(0)
    llm = load_llm()
    enc = Encoder.from_pretrained(a.checkpoint, llm=llm)
    train, held, _ = checkpoint_splits(enc.meta, llm)
    held = held.take(list(range(min(a.limit, len(held)))))
    pad = llm.pad_id
    n = a.n

    def fit(rows):  # every draft exactly n tokens
        return [(list(r) + [pad] * n)[:n] for r in rows]

    t0 = time.time()
    drafts = {"pad": [[pad] * n for _ in held.sources], "mode": fit(position_mode(train, held)),
              "nearest": fit(nearest_neighbour(train, held, load_teacher(), exclude_self=False)),
              "encoder": fit(encoder_outputs(enc, llm, held.sources, enc.layout, "fp32", False))}
    prompts = [prompt_ids(llm, s, chat=True) for s in held.sources]
    print(f"drafts ready in {time.time() - t0:.0f} s", flush=True)

    runs = {}
    for name, d in drafts.items():
        steps, fixed = [[] for _ in range(a.passes + 1)], []
        t1 = time.time()
        for lo in range(0, len(prompts), a.batch_size):
            r = jacobi(llm, prompts[lo:lo + a.batch_size], d[lo:lo + a.batch_size], a.passes,
                       stop_when_fixed=False)
            for k in range(a.passes + 1):
                steps[k] += r.steps[k]
            fixed += r.fixed_at
        runs[name] = (steps, fixed)
        print(f"{name}: {time.time() - t1:.0f} s", flush=True)

    ref = runs["pad"][0][-1]  # the fixed point (every draft reaches the same one; checked below)
    agree = {name: sum(s[-1][j] == ref[j] for j in range(len(ref))) / len(ref) for name, (s, _) in runs.items()}
    target_match = sum(token_accuracy(r, t[:n]) for r, t in zip(ref, held.token_ids)) / len(ref)

    def prefix(y, r):
        k = 0
        while k < len(r) and y[k] == r[k]:
            k += 1
        return k

    table = {}
    for name, (steps, fixed) in runs.items():
        rows = []
        for k, ys in enumerate(steps):
            rows.append({"pass": k,
                         "token_acc": sum(token_accuracy(y, r) for y, r in zip(ys, ref)) / len(ref),
                         "exact": sum(y == r for y, r in zip(ys, ref)) / len(ref),
                         "prefix": sum(prefix(y, r) for y, r in zip(ys, ref)) / len(ref)})
        reached = [f for f in fixed if f is not None]
        table[name] = {"by_pass": rows, "fixed_within": len(reached) / len(fixed),
                       "mean_passes_to_fixed_point": sum(reached) / max(len(reached), 1),
                       "passes_to_ar_output": sum(f - 1 for f in reached) / max(len(reached), 1)}
    res = {"checkpoint": a.checkpoint, "prompts": len(ref), "n": n, "passes": a.passes,
           "fixed_point_same_for_all_drafts": agree, "fixed_point_token_acc_vs_pairs_file": target_match,
           "drafts": table}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(res, indent=1))

    show = [0, 1, 2, 3, 4, 6, 8, 12, 16]
    print(f"\nprompts {len(ref)}, N {n}; fixed point vs the pairs file's targets: token acc {target_match:.3f}")
    print("| draft | " + " | ".join(f"pass {k}" for k in show) + " | passes until the output is the AR reply |")
    print("|---" * (len(show) + 2) + "|")
    for name, t in table.items():
        cells = [f"{t['by_pass'][k]['token_acc']:.3f} / {t['by_pass'][k]['exact']:.2f}" for k in show
                 if k < len(t["by_pass"])]
        print(f"| {name} | " + " | ".join(cells) + f" | {t['passes_to_ar_output']:.2f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, t in table.items():
        ks = [r["pass"] for r in t["by_pass"]]
        ax[0].plot(ks, [r["token_acc"] for r in t["by_pass"]], marker=".", label=name)
        ax[1].plot(ks, [r["exact"] for r in t["by_pass"]], marker=".", label=name)
    for x, lab in zip(ax, ("token accuracy vs the AR reply", "exact match with the AR reply")):
        x.set_xlabel("refinement passes (0 = the draft)")
        x.set_title(lab)
        x.grid(alpha=0.3)
    ax[0].legend()
    fig.suptitle(f"Jacobi refinement of {n}-token story continuations, {len(ref)} held-out prompts, SmolLM2-135M")
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)
    print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
