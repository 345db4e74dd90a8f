"""Does the bf16 one pass reproduce fp32 on fitted proto-tokens, at batch 1 and 8? And what does a fit margin cost?

    python scripts/bf16_agreement.py --corpus out/analysis/pin-quick/none-24-300 [--corpus ...]
        decode every converged row of each corpus in fp32 and in bf16, batch 1 and 8: texts decoded exactly
    python scripts/bf16_agreement.py --fit-margins 0,1.0
        fit 16 bundled texts of 15-17 tokens with nar's default engine at each FitConfig.margin (300-step cap):
        exact texts, median steps, seconds, and the same four decodings (time it alone)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nar import corpus  # noqa: E402
from nar.config import FitConfig  # noqa: E402
from nar.data import bundled_texts  # noqa: E402
from nar.decode import decode_ids  # noqa: E402
from nar.fit import fit_texts, make_layout  # noqa: E402
from nar.llm import Layout, load_llm  # noqa: E402


def decodings(llm, e, m, ids, layout) -> dict[str, int]:
    """Texts decoded exactly, per (precision, batch size)."""
    n = [len(t) for t in ids]
    out = {}
    for prec in ("fp32", "bf16"):
        for bs in (1, 8):
            pred = decode_ids(llm, e, m, n, layout, precision=prec, batch_size=bs)
            out[f"{prec}_b{bs}"] = sum(p == t for p, t in zip(pred, ids))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", default=[])
    ap.add_argument("--fit-margins", default="")
    args = ap.parse_args()
    llm = load_llm(device="cpu")
    for path in args.corpus:
        c = corpus.columns(path, ["e", "m", "token_ids"], rows="converged")
        ids = [[int(x) for x in t] for t in c["token_ids"]]
        layout = Layout.from_dict(corpus.read_manifest(path)["layout"])
        row = decodings(llm, torch.from_numpy(c["e"]), torch.from_numpy(c["m"]), ids, layout)
        print(json.dumps({"corpus": path, "converged": len(ids), **row}), flush=True)
    texts = [r["text"] for r in bundled_texts() if 15 <= len(llm.encode(r["text"])) <= 17][8:24]
    for margin in [float(x) for x in args.fit_margins.split(",") if x]:
        cfg = FitConfig(max_steps=300, margin=margin)
        t0 = time.perf_counter()
        ok = [r for r in fit_texts(llm, texts, cfg) if r.converged]
        secs = time.perf_counter() - t0
        row = decodings(llm, torch.stack([r.e for r in ok]), torch.stack([r.m for r in ok]),
                        [r.token_ids for r in ok], make_layout(llm, cfg))
        print(json.dumps({"margin": margin, "converged": len(ok), "of": len(texts), "seconds": round(secs),
                          "median_steps": statistics.median(r.steps for r in ok), **row}), flush=True)


if __name__ == "__main__":
    main()
