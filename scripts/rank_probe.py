"""Where the target token ranks in the one pass's logits, by training frequency; and post-hoc prior corrections.

    python scripts/rank_probe.py [CHECKPOINT] [--limit N]

For each held-out sentence the encoder's (e, m) go through one pass at the TRUE length; per target token we
record its rank among the V logits, banded by its count in the checkpoint's training targets. Then two
text-independent corrections of the logits are swept (tuned on the even-indexed held-out sentences, reported on
the odd ones):
  unigram   logits - tau * log(count + 1)                    (logit adjustment for a long-tailed label prior)
  marginal  log_softmax - tau * log p_bar(token | position)  (PMI against the system's own average output at
            each position over training sources: what the one pass writes whatever the source)
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import torch
from generalisation_probe import FREQ_BUCKETS as BANDS  # the frequency bands of the generalisation probe

from nar.data import checkpoint_splits
from nar.encoder import Encoder
from nar.llm import load_llm
from nar.train import token_prior_bias


@torch.no_grad()
def log_probs(enc, llm, pairs, bs=64):
    """Per text: (N, V) log-softmax of the one pass at the true length N."""
    out = []
    for lo in range(0, len(pairs), bs):
        src = pairs.sources[lo:lo + bs]
        tg = pairs.token_ids[lo:lo + bs]
        with llm.autocast("auto"):
            e, m, _ = enc(src)
            n = max(len(t) for t in tg)
            lg = llm.proto_logits(e.float(), m.float(), n, enc.layout).float().log_softmax(-1)
        out += [lg[j, : len(t)].cpu() for j, t in enumerate(tg)]
    return out


def accuracy(lps, targets, adjust, tau):
    """Pooled token accuracy and exact match of argmax(adjust(log-probs, tau))."""
    tok = ex = tot = 0
    for lp, t in zip(lps, targets):
        pred = adjust(lp, tau).argmax(-1).tolist()
        right = sum(p == x for p, x in zip(pred, t))
        tok += right
        tot += len(t)
        ex += right == len(t)
    return tok / tot, ex / len(targets)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/stsb-autoencoder")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--prior-texts", type=int, default=1000)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    llm = load_llm()
    enc = Encoder.from_pretrained(args.checkpoint, llm=llm)
    train, held, _ = checkpoint_splits(enc.meta, llm)
    n = min(len(held), args.limit or len(held))
    held = held.take(list(range(n)))
    freq = Counter(x for t in train.token_ids for x in t)
    V = llm.model.get_input_embeddings().weight.shape[0]
    lps = log_probs(enc, llm, held)
    # ranks by band
    ranks = {b: [] for *_, b in BANDS}
    for lp, t in zip(lps, held.token_ids):
        tgt = torch.tensor(t)
        r = (lp > lp.gather(1, tgt[:, None])).sum(1)
        for x, rk in zip(t, r.tolist()):
            ranks[next(b for lo, hi, b in BANDS if lo <= freq[x] <= hi)].append(rk)
    res = {"checkpoint": args.checkpoint, "texts": n, "rank_by_train_frequency": {}}
    for b, rs in ranks.items():
        if rs:
            rs = sorted(rs)
            res["rank_by_train_frequency"][b] = {
                "tokens": len(rs), "top1": round(sum(r == 0 for r in rs) / len(rs), 3),
                "top5": round(sum(r < 5 for r in rs) / len(rs), 3),
                "top50": round(sum(r < 50 for r in rs) / len(rs), 3), "median_rank": rs[len(rs) // 2]}
    # the system's marginal output per position, over training sources
    idx = list(range(len(train)))
    random.Random(0).shuffle(idx)
    tr = train.take(sorted(idx[: args.prior_texts]))
    tr_lps = log_probs(enc, llm, tr)
    width = max(len(x) for x in tr_lps)
    marg = torch.full((width, V), -30.0)
    for i in range(width):
        rows = [x[i] for x in tr_lps if len(x) > i]
        marg[i] = torch.stack(rows).exp().mean(0).clamp_min(1e-12).log()
    # log of the add-one smoothed training frequency: log(count + 1) up to a constant, which no argmax sees
    log_prior = token_prior_bias(train.token_ids, V, 1.0)
    tune = list(range(0, n, 2))
    test = list(range(1, n, 2))
    T = [held.token_ids[i] for i in test]
    res["corrections"] = []
    for name, fn in (("unigram", lambda lp, tau: lp - tau * log_prior),
                     ("marginal", lambda lp, tau: lp - tau * marg[: lp.shape[0]])):
        best = None
        for tau in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0):
            acc, ex = accuracy([lps[i] for i in tune], [held.token_ids[i] for i in tune], fn, tau)
            res["corrections"].append({"kind": name, "tau": tau, "split": "tune", "token_acc": round(acc, 4),
                                       "exact": round(ex, 4)})
            if best is None or acc > best[1]:
                best = (tau, acc)
        acc, ex = accuracy([lps[i] for i in test], T, fn, best[0])
        acc0, ex0 = accuracy([lps[i] for i in test], T, fn, 0.0)
        res["corrections"].append({"kind": name, "tau": best[0], "split": "test", "token_acc": round(acc, 4),
                                   "exact": round(ex, 4), "uncorrected_token_acc": round(acc0, 4),
                                   "uncorrected_exact": round(ex0, 4)})
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
