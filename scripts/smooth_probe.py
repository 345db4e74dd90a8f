"""Is the text -> fitted proto-token map smooth when every text starts from the same point? (docs/ENCODER.md)

    python scripts/smooth_probe.py [--pairs 12] [--min-score 4.0] [--max-steps 300]

An encoder is a smooth function of its source, so regression onto fitted proto-tokens can only work if similar
texts get similar solutions. With nar's per-text seeded start they do not (paraphrases cos 0.02: the "norms"
section). This fits the sentences of the first --pairs STS-B dev pairs scored >= --min-score (paraphrases)
under three starts and asks, per start, whether a text's solution is closer to its paraphrase's than to other
texts', beside the start itself:

  seeded   nar's default: the mean of the text's own token embeddings plus noise seeded by the text
  tokens   the same mean of the text's token embeddings plus ONE noise vector shared by every text (a smooth
           function of the text)
  common   one point for every text: the mean token embedding of the vocabulary (where an encoder starts)

For (e, m) concatenated: mean cosine between paraphrase partners and between non-partners (of the solutions,
and of the displacements solution - start), the share of texts whose nearest other solution is its partner,
and the Spearman correlation between the displacements' cosines and the teacher's over all pairs.
"""

import argparse
import csv
import json

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr


def pair_stats(x: torch.Tensor, teacher_sim: torch.Tensor) -> dict:
    """x (2P, D), rows 2i and 2i+1 paraphrases."""
    c = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    n = x.shape[0]
    partner = torch.arange(n) ^ 1
    off = ~torch.eye(n, dtype=torch.bool)
    part = c[torch.arange(n), partner]
    others = c[off & (torch.arange(n)[None, :] != partner[:, None])]
    nearest = c.masked_fill(~off, -2).argmax(-1)
    iu = torch.triu_indices(n, n, 1)
    rho = spearmanr(c[iu[0], iu[1]].numpy(), teacher_sim[iu[0], iu[1]].numpy()).statistic
    return {"cos_partner": round(float(part.mean()), 3), "cos_others": round(float(others.mean()), 3),
            "nearest_is_partner": round(float((nearest == partner).float().mean()), 3),
            "spearman_teacher": round(float(rho), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stsb", default="../shared/data/stsb/dev.tsv")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--min-score", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=300)
    a = ap.parse_args()

    from nar.config import FitConfig
    from nar.fit import FitItem, fit_stream, init_vector, initial_vectors
    from nar.llm import load_llm
    from nar.teacher import load_teacher

    with open(a.stsb, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts = []
    for r in rows:
        if float(r["score"]) >= a.min_score and r["sentence1"] != r["sentence2"]:
            texts += [r["sentence1"], r["sentence2"]]
        if len(texts) >= 2 * a.pairs:
            break
    llm = load_llm()
    t = F.normalize(load_teacher().encode(texts), dim=-1)
    teacher_sim = t @ t.T
    cfg = FitConfig(max_steps=a.max_steps)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    noise = [init_vector("shared/" + k, cfg.seed, llm.hidden_size, llm.embed_std) for k in ("e", "m")]
    out = {"texts": len(texts), "max_steps": a.max_steps, "teacher": pair_stats(t, teacher_sim)}
    for start in ("seeded", "tokens", "common"):
        # seeded / tokens: FitConfig's own 'tokens' start with per-text or shared noise (--init-noise)
        cfg = cfg.replace(init_noise="shared" if start == "tokens" else "text")
        items = [FitItem(key=str(i), ids=llm.encode(text), init_key=text) for i, text in enumerate(texts)]
        if start == "common":
            for it in items:
                it.init_e, it.init_m = emb.mean(0) + noise[0], emb.mean(0) + noise[1]
        starts = {it.key: torch.cat(initial_vectors(llm, it, cfg)) for it in items}
        res = {r.key: r for r in fit_stream(llm, items, cfg)}
        sol = torch.stack([torch.cat([res[str(i)].e, res[str(i)].m]).float() for i in range(len(texts))])
        st = torch.stack([starts[str(i)].float() for i in range(len(texts))])
        out[start] = {"accuracy": round(sum(r.accuracy for r in res.values()) / len(res), 3),
                      "exact": sum(r.accuracy >= 1.0 for r in res.values()),
                      "solution": pair_stats(sol, teacher_sim), "displacement": pair_stats(sol - st, teacher_sim),
                      "start": pair_stats(st, teacher_sim) if start != "common" else None,
                      "move_over_norm": round(float((sol - st).norm(dim=-1).mean() / sol.norm(dim=-1).mean()), 3)}
        print(json.dumps({start: out[start]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
