"""Is proto-token space one frame across batches? STS-B pairs split across batches, per mechanism.

For each of N STS-B dev pairs (seeded sample), sentence A is fitted among all A's and sentence B among
all B's, so the two never share a batch (N > slots). Each variant builds its own corpus; we report the
Spearman correlation between cos(x_A, x_B) and the human score for x = e, m, [e; m], beside the
teacher's own, plus the mean token accuracy and the corpus-wide Spearman of proto-token vs teacher
pairwise cosines ("agree"). The library function is nar.analysis.semantics.sts_experiment.

    python scripts/sts_frames.py --stsb dev.tsv --pairs 100 --max-steps 200   # ~1 h on 2 CPU cores
    python scripts/sts_frames.py --stsb dev.tsv --pairs 24 --max-steps 100 --variants none,teacher_bank
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nar.analysis.semantics import STS_VARIANTS, sts_experiment  # noqa: E402
from nar.llm import load_llm  # noqa: E402
from nar.teacher import load_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--variants", default="none,batch,bank,teacher_batch,teacher_bank",
                    help="comma-separated: " + ", ".join(STS_VARIANTS))
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "sts_frames")
    ap.add_argument("--slots", type=int, default=8, help="texts fitted at once")
    ap.add_argument("--stsb", type=Path, required=True, help="STS-B tsv in GLUE layout (e.g. GLUE's STS-B dev.tsv)")
    args = ap.parse_args()
    results = sts_experiment(args.out_dir, llm=load_llm(device="cpu"), teacher=load_teacher(), pairs=args.pairs,
                             max_steps=args.max_steps, variants=args.variants.split(","), slots=args.slots,
                             stsb=args.stsb,
                             on_row=lambda r: print(json.dumps(r), flush=True))
    (args.out_dir / f"results-{args.pairs}-{args.max_steps}.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'variant':34} {'STS e':>6} {'STS m':>6} {'STS em':>6} {'teacher':>7} {'agree e':>7} "
          f"{'agree m':>7} {'acc':>6} {'conv':>5}")
    for r in results:
        print(f"{r['variant']:34} {r['sts_e']:>6.3f} {r['sts_m']:>6.3f} {r['sts_em']:>6.3f} {r['sts_teacher']:>7.3f} "
              f"{r['agree_e']:>7.3f} {r['agree_m']:>7.3f} {r['mean_acc']:>6.3f} {r['converged']:>5}")


if __name__ == "__main__":
    main()
