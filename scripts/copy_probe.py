"""Is there a token-general copy path into the one pass? (docs/ENCODER.md, twelfth session)

    python scripts/copy_probe.py [N_HELD_OUT] [bag]     # default 300; 'bag': the bag-only rows alone

Adds alpha x (the source's bag of token embeddings, scaled to one mean token norm) to the shipped encoder's e
(or to e and m; or, 'bag-only', e = the mean token embedding + the bag and m = the mean embedding, the natural
norm where fitted proto-tokens live) and prints, per training-frequency band of the target token: [tokens,
top-1 at its own position, top-50 at its own position, top-50 at any output position]. If the frozen LLM copied
token identities out of a superposed input (as its attention heads copy context tokens), those figures would
rise for every band alike.
"""
import sys
from collections import Counter

import torch

from nar.data import checkpoint_splits
from nar.encoder import Encoder
from nar.llm import load_llm

BANDS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, 10**9, ">=100"))


@torch.no_grad()
def main() -> None:
    llm = load_llm()
    enc = Encoder.from_pretrained("checkpoints/stsb-autoencoder", llm=llm)
    train, held, _ = checkpoint_splits(enc.meta, llm)
    held = held.take(list(range(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
    freq = Counter(x for t in train.token_ids for x in t)
    E = llm.model.get_input_embeddings().weight.float()
    mean = E.mean(0)
    batches = []  # the encoder's (e, m) and the bag of each batch, computed once for every setting below
    for lo in range(0, len(held), 64):
        src, tg = held.sources[lo:lo + 64], held.token_ids[lo:lo + 64]
        with llm.autocast("auto"):
            e, m, _ = enc(src)
        bag = torch.stack([E[torch.tensor(t)].sum(0) for t in tg])
        batches.append((tg, e.float(), m.float(), bag / bag.norm(dim=-1, keepdim=True) * E.norm(dim=-1).mean()))
    for where in ("none", "e", "em", "bag-only"):
        for alpha in ((0.0,) if where == "none" else (1.0, 3.0, 10.0)):
            if where != "bag-only" and len(sys.argv) > 2:
                continue
            acc = {b: [0, 0, 0, 0] for *_, b in BANDS}  # tokens, top1 own pos, top50 own pos, top50 anywhere
            for tg, e, m, bag in batches:
                if where == "bag-only":  # no encoder: e = the mean embedding + the bag, m = the mean embedding
                    e, m = (mean + alpha * bag)[:, None], mean.expand_as(m)
                if where in ("e", "em"):
                    e = e + alpha * bag[:, None]
                if where == "em":
                    m = m + alpha * bag
                with llm.autocast("auto"):
                    lg = llm.proto_logits(e, m, max(len(t) for t in tg), enc.layout).float()
                for j, t in enumerate(tg):
                    lj = lg[j, :len(t)]
                    for i, x in enumerate(t):
                        a = acc[next(b for lo, hi, b in BANDS if lo <= freq[x] <= hi)]
                        r_own = int((lj[i] > lj[i, x]).sum())
                        r_any = int((lj > lj[:, x:x + 1]).sum(1).min())
                        a[0], a[1], a[2], a[3] = a[0] + 1, a[1] + (r_own == 0), a[2] + (r_own < 50), a[3] + (r_any < 50)
            row = {b: [v[0]] + [round(x / v[0], 3) for x in v[1:]] for b, v in acc.items()}
            print(f"{where} a={alpha}", row, flush=True)


if __name__ == "__main__":
    main()
