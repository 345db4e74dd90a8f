"""Decoding rules for the one pass, compared on one checkpoint's held-out texts (docs/ENCODER.md).

    python scripts/decode_probe.py CHECKPOINT [--limit 500] [--top 8]

The frozen LLM's one pass gives a distribution per output position; `argmax` reads each on its own (what nar does
by default). The other rules read the same logits, no extra pass: `no-adjacent` is the best-scoring sequence
(sum of log-probabilities, exact dynamic programme over each position's top-K tokens) in which no token
follows itself; `once` gives each token at most one position, greedily by log-probability (punctuation
exempt). Prints one JSON line per rule with the eval-encoder metrics.
"""

import argparse
import json

import torch

from nar.backends import TorchBackend
from nar.data import checkpoint_splits
from nar.encoder import Encoder
from nar.evaluate import score, strip_eos
from nar.llm import load_llm


def no_adjacent(logp: torch.Tensor, top: int) -> list[int]:
    """logp (N, V) -> the highest-scoring token sequence with no token repeated at the next position."""
    vals, ids = logp.topk(top, dim=-1)  # (N, K)
    best, back = vals[0].clone(), []
    for j in range(1, logp.shape[0]):
        same = ids[j][:, None] == ids[j - 1][None, :]  # (K, K): candidate k at j equals candidate l at j-1
        cand = best[None, :].expand(top, -1).masked_fill(same, float("-inf"))
        prev = cand.argmax(-1)
        best = vals[j] + cand.gather(1, prev[:, None])[:, 0]
        back.append(prev)
    k = int(best.argmax())
    out = [k]
    for prev in reversed(back):
        k = int(prev[k])
        out.append(k)
    out.reverse()
    return [int(ids[j, k]) for j, k in enumerate(out)]


def once(logp: torch.Tensor, top: int, exempt: set[int]) -> list[int]:
    """Each non-exempt token at most once: fill positions greedily by log-probability."""
    vals, ids = logp.topk(top, dim=-1)
    order = sorted(((float(vals[j, k]), j, int(ids[j, k])) for j in range(len(ids)) for k in range(top)),
                   reverse=True)
    out, used = [None] * len(ids), set()
    for _, j, t in order:
        if out[j] is None and (t in exempt or t not in used):
            out[j] = t
            used.add(t)
    return [t if t is not None else int(ids[j, 0]) for j, t in enumerate(out)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    llm = load_llm()
    enc = Encoder.from_pretrained(a.checkpoint, llm=llm)
    train, held, _ = checkpoint_splits(enc.meta, llm)
    held = held.take(list(range(min(a.limit, len(held)))))
    stop = bool(enc.meta.get("stop_at_eos"))
    tg = [strip_eos(t, llm.eos_id, stop) for t in held.token_ids]
    seen = {t for ids in train.token_ids for t in ids}
    exempt = {i for i in seen if not llm.tokenizer.decode([i]).strip().isalnum()}  # punctuation may repeat
    e, m, n = enc.predict(held.sources, 32)
    backend = TorchBackend(llm, "fp32")
    preds = {"argmax": [], "no-adjacent": [], "once": []}
    for lo in range(0, len(held), 32):
        hi = min(lo + 32, len(held))
        width = max(n[lo:hi])
        embeds = llm.proto_inputs(e[lo:hi], enc.m_inputs(m[lo:hi]), width, enc.layout, enc.pos_codes)
        logp = backend.logits(embeds, width).float().log_softmax(-1).cpu()
        for j, k in enumerate(range(lo, hi)):
            lp = logp[j, : n[k]]
            preds["argmax"].append(lp.argmax(-1).tolist())
            preds["no-adjacent"].append(no_adjacent(lp, a.top))
            preds["once"].append(once(lp, a.top, exempt))
    for rule, pred in preds.items():
        pred = [strip_eos(p, llm.eos_id, stop) for p in pred]
        res = score(pred, tg, llm.tokenizer)
        print(json.dumps({"rule": rule, "texts": len(pred), **res,
                          "examples": [llm.tokenizer.decode(p, skip_special_tokens=True) for p in pred[:4]]}))


if __name__ == "__main__":
    main()
