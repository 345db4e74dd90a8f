"""Is proto-token space one frame across batches? STS-B pairs split across batches, per mechanism.

For each of N STS-B dev pairs (seeded sample), sentence A is fitted among all A's and sentence B among
all B's, so the two never share a batch (N > slots). Each variant builds its own corpus with
`nar.build.build_corpus`; we report the Spearman correlation between cos(x_A, x_B) and the human score
for x = e, m, [e; m], beside the teacher's own, plus the mean token accuracy and the corpus-wide
Spearman of proto-token vs teacher pairwise cosines.

    python scripts/sts_frames.py --pairs 100 --max-steps 200            # ~1 h on 2 CPU cores
    python scripts/sts_frames.py --pairs 24 --max-steps 100 --variants none,teacher_bank
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nar import corpus  # noqa: E402
from nar.analysis.semantics import load_stsb, pairs_spearman, teacher_agreement  # noqa: E402
from nar.build import build_corpus  # noqa: E402
from nar.config import BuildConfig, FitConfig  # noqa: E402
from nar.llm import load_llm  # noqa: E402
from nar.teacher import load_teacher  # noqa: E402

VARIANTS = {
    "none": ("no RD, random init", dict(rd_weight=0.0), dict(init="embed_std")),
    "batch": ("batch RD, random init", dict(rd_weight=1.0, rd_bank=0), dict(init="embed_std")),
    "bank": ("bank RD (256), random init", dict(rd_weight=1.0, rd_bank=256), dict(init="embed_std")),
    "teacher": ("teacher init, no RD", dict(rd_weight=0.0), dict(init="teacher")),
    "teacher_batch": ("teacher init + batch RD", dict(rd_weight=1.0, rd_bank=0), dict(init="teacher")),
    "teacher_bank": ("teacher init + bank RD", dict(rd_weight=1.0, rd_bank=256), dict(init="teacher")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--variants", default="none,batch,bank,teacher_batch,teacher_bank")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "sts_frames")
    ap.add_argument("--stsb", type=Path, default=None)
    args = ap.parse_args()
    pairs = load_stsb(args.stsb, n=args.pairs, seed=0) if args.stsb else load_stsb(n=args.pairs, seed=0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    src = args.out_dir / f"stsb-{args.pairs}.jsonl"
    rows = [{"id": f"a{i}", "text": a} for i, (a, _, _) in enumerate(pairs)]
    rows += [{"id": f"b{i}", "text": b} for i, (_, b, _) in enumerate(pairs)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    llm, teacher = load_llm(device="cpu"), load_teacher()
    ids = [(f"a{i}", f"b{i}") for i in range(len(pairs))]
    scores = [s for _, _, s in pairs]
    results = []
    for key in args.variants.split(","):
        name, bkw, fkw = VARIANTS[key]
        out = args.out_dir / f"{key}-{args.pairs}-{args.max_steps}"
        t0 = time.time()
        s = build_corpus(BuildConfig(input=str(src), out=str(out), **bkw),
                         FitConfig(max_steps=args.max_steps, max_tokens=48, **fkw), llm=llm, teacher=teacher,
                         show_progress=False)
        ds = corpus.load(out)
        row = {"variant": name, **{f"sts_{k}": round(v, 3) for k, v in pairs_spearman(ds, ids, scores).items()},
               **{f"agree_{k}": round(v, 3) for k, v in teacher_agreement(ds).items()},
               "mean_acc": round(float(ds[:]["accuracy"].mean()), 3), "converged": int(sum(ds[:]["converged"])),
               "texts": len(ds), "fitted_now": s["fitted"], "minutes": round((time.time() - t0) / 60, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.out_dir / f"results-{args.pairs}-{args.max_steps}.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'variant':28} {'STS e':>6} {'STS m':>6} {'STS em':>6} {'teacher':>7} {'agree e':>7} "
          f"{'agree m':>7} {'acc':>6} {'conv':>5}")
    for r in results:
        print(f"{r['variant']:28} {r['sts_e']:>6.3f} {r['sts_m']:>6.3f} {r['sts_em']:>6.3f} {r['sts_teacher']:>7.3f} "
              f"{r['agree_e']:>7.3f} {r['agree_m']:>7.3f} {r['mean_acc']:>6.3f} {r['converged']:>5}")


if __name__ == "__main__":
    main()
