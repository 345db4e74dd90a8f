"""The anchor-loss trade-off (Paper B): reconstruction accuracy vs how close e's projection is to the teacher.

Builds one small corpus per anchor weight (same texts, the build-corpus defaults otherwise: teacher-aligned
init, RD weight 1 with the bank) and reports per weight: converged, mean token accuracy, median steps, the
mean anchor cosine cos(e Q^T, u) between e's fixed projection into teacher space and the teacher
embedding, and the Spearman agreement of e's pairwise cosines with the teacher's.

    python scripts/anchor_sweep.py                               # 12 texts, weights 0,1,10,100, 200 steps
    python scripts/anchor_sweep.py --weights 0,10 --texts 8 --max-steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nar import corpus  # noqa: E402
from nar.build import build_corpus  # noqa: E402
from nar.config import BuildConfig, FitConfig  # noqa: E402
from nar.data import bundled_texts  # noqa: E402
from nar.llm import load_llm  # noqa: E402
from nar.losses import teacher_projection  # noqa: E402
from nar.space import teacher_agreement  # noqa: E402
from nar.teacher import load_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="0,1,10,100")
    ap.add_argument("--texts", type=int, default=12, help="texts of 10-18 tokens from nar/assets/texts.jsonl")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "anchor_sweep")
    args = ap.parse_args()
    llm, teacher = load_llm(device="cpu"), load_teacher()
    rows = bundled_texts()
    pick = [r for r in rows if 10 <= len(llm.encode(r["text"])) <= 18][: args.texts]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    src = args.out_dir / "texts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in pick))
    results = []
    for w in [float(x) for x in args.weights.split(",")]:
        out = args.out_dir / f"anchor{w:g}-{args.max_steps}"
        bcfg = BuildConfig(input=str(src), out=str(out), anchor_weight=w)
        build_corpus(bcfg, FitConfig(max_steps=args.max_steps, max_tokens=32), llm=llm, teacher=teacher,
                     show_progress=False)
        ds = corpus.load(out)
        b = ds[:]
        Q = teacher_projection(teacher.dim, llm.hidden_size, bcfg.projection_seed)
        anchor_cos = F.cosine_similarity(b["e"] @ Q.T, b["teacher"], dim=-1)
        row = {"anchor_weight": w, "texts": len(b["id"]), "converged": int(sum(b["converged"])),
               "mean_acc": round(float(b["accuracy"].mean()), 4),
               "median_steps": statistics.median(b["steps"].tolist()),
               "anchor_cos": round(float(anchor_cos.mean()), 4),
               "agree_e": round(teacher_agreement(b["e"], b["m"], b["teacher"])["e"], 4)}
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.out_dir / f"results-{args.max_steps}.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'anchor w':>8} {'conv':>6} {'mean acc':>8} {'med steps':>9} {'anchor cos':>10} {'agree e':>7}")
    for r in results:
        print(f"{r['anchor_weight']:>8g} {r['converged']:>3}/{r['texts']:<2} {r['mean_acc']:>8.3f} "
              f"{r['median_steps']:>9} {r['anchor_cos']:>10.3f} {r['agree_e']:>7.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
