"""Can two vectors still make the one pass exact when its output rows cannot read each other?
(docs/ENCODER.md, "Fourteenth session").

    python scripts/rows_probe.py [--texts 8] [--steps 300]

Fits (e, m) for the first K STS-B dev sentences of 8-14 tokens (out/data/stsb-dev.jsonl; `nar make-data`), batched
Adam at lr 3e-2 from the mean token embedding (+ 0.01 noise, seed 0), once under each `Layout.rows`: 'causal'
(Paper A's pass) and 'independent' (each m row attends to [prefix, e] and itself only). Prints the trajectory of
the cross-entropy, token accuracy and texts reproduced exactly, every 50 steps, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nar.llm import Layout, load_llm
from nar.losses import reconstruction_loss


def fit(llm, targets: list[list[int]], layout: Layout, steps: int) -> list[dict]:
    torch.manual_seed(0)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    e = (emb.mean(0) + 0.01 * torch.randn(len(targets), emb.shape[1]).to(emb.device)).requires_grad_()
    m = (emb.mean(0) + 0.01 * torch.randn(len(targets), emb.shape[1]).to(emb.device)).requires_grad_()
    opt = torch.optim.Adam([e, m], lr=3e-2)
    log, t0 = [], time.perf_counter()
    for step in range(steps + 1):
        rec = reconstruction_loss(llm, e, m, targets, layout, "auto")
        if step % 50 == 0:
            log.append({"step": step, "ce": round(float(rec.ce.detach().mean()), 3),
                        "acc": round(float(rec.acc.mean()), 3), "exact": int((rec.acc == 1).sum()),
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(layout.rows, log[-1], flush=True)
        opt.zero_grad()
        rec.ce.mean().backward()
        opt.step()
    return log


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    llm = load_llm()
    with open("out/data/stsb-dev.jsonl", encoding="utf-8") as f:
        ids = [llm.encode(json.loads(line)["text"]) for line in f]
    targets = [t for t in ids if 8 <= len(t) <= 14][: args.texts]
    bos = llm.resolve_prefix("bos")
    res = {"texts": len(targets), "lengths": [len(t) for t in targets],
           **{rows: fit(llm, targets, Layout(bos, "e", rows), args.steps) for rows in ("independent", "causal")}}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
