"""Where an encoder puts its proto-tokens, against where fitting puts them (docs/ENCODER.md, "norms").

    python scripts/norm_probe.py CHECKPOINT [CHECKPOINT ...] [--texts 8]

Fits the first --texts held-out sentences of out/data/stsb-dev.jsonl with nar's default recipe (one text at a
time is not needed: fitting is per text in a batch), then prints, for the fitted vectors and for each
encoder's predictions on the same sentences: the mean L2 norm of e and m, the mean pairwise cosine between
texts (1.0 = every text gets the same direction), and the mean cosine with the fitted vectors. The mean token
embedding norm is printed for scale.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def mean_offdiag_cos(x: torch.Tensor) -> float:
    c = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    k = x.shape[0]
    return float((c.sum() - c.diag().sum()) / (k * (k - 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--data", default="out/data/stsb-dev.jsonl")
    a = ap.parse_args()

    from nar.config import FitConfig
    from nar.encoder import Encoder
    from nar.fit import FitItem, fit_stream
    from nar.llm import load_llm

    llm = load_llm()
    texts = [json.loads(x)["text"] for x in open(a.data, encoding="utf-8").read().splitlines()[: a.texts]]
    emb = llm.model.get_input_embeddings().weight.float()
    print(f"token embeddings: mean norm {emb.norm(dim=-1).mean():.2f}, norm of the mean {emb.mean(0).norm():.2f}")
    res = {r.key: r for r in fit_stream(llm, [FitItem(key=str(i), ids=llm.encode(t), init_key=t)
                                               for i, t in enumerate(texts)], FitConfig())}
    fe = torch.stack([res[str(i)].e for i in range(len(texts))]).float()
    fm = torch.stack([res[str(i)].m for i in range(len(texts))]).float()
    acc = sum(res[str(i)].accuracy for i in range(len(texts))) / len(texts)
    print("| vectors | norm e | norm m | cos between texts, e | cos between texts, m | cos with fitted e | "
          "cos with fitted m |\n|---|---|---|---|---|---|---|")
    print(f"| fitted (mean accuracy {acc:.3f}) | {fe.norm(dim=-1).mean():.1f} | {fm.norm(dim=-1).mean():.1f} | "
          f"{mean_offdiag_cos(fe):.2f} | {mean_offdiag_cos(fm):.2f} | 1 | 1 |")
    for ck in a.checkpoints:
        e, m, _ = Encoder.from_pretrained(ck, llm=llm).predict(texts)
        e = e if e.dim() == 2 else e[:, 0]
        print(f"| encoder {ck} | {e.norm(dim=-1).mean():.1f} | {m.norm(dim=-1).mean():.1f} | "
              f"{mean_offdiag_cos(e):.2f} | {mean_offdiag_cos(m):.2f} | "
              f"{F.cosine_similarity(e, fe).mean():.2f} | {F.cosine_similarity(m, fm).mean():.2f} |")


if __name__ == "__main__":
    main()
