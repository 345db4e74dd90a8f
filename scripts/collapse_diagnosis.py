"""Why does the CE gradient through the frozen LLM pull every text to the same point? (docs/ENCODER.md)

At a shared starting point (e = m = the mean token embedding, where an untrained encoder starts) and at a
per-text fitted solution, take the per-text gradients g_i = d CE_i / d(e, m) of STS-B sentences and measure:
  common share   |mean_i g_i|^2 / mean_i |g_i|^2 (1: every text pulls the same way; 1/B: independent)
  cos to mean    mean_i cos(g_i, mean g)
  m cancellation |sum_j g_m,j| / sum_j |g_m,j| over the output positions j of one text (1: positions agree)
  smoothness     Spearman between cos(g_i - mean g, g_j - mean g) and the teacher's cos(t_i, t_j) over pairs:
                 whether the text-specific part of the pull is a smooth function of meaning an encoder could learn
  token overlap  the same Spearman against two token-level similarities of the texts: the share of output
                 positions holding the same token (positional) and the Jaccard of their token sets (bag): whether
                 the pull is a function of which token stands where, which a compositional encoder could learn

    python scripts/collapse_diagnosis.py [--texts 64]
"""

import argparse
import json

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from nar.llm import Layout, load_llm
from nar.teacher import load_teacher


def per_text_grads(llm, layout, texts, e0, m0):
    gs, cancel = [], []
    for t in texts:
        ids = torch.tensor(llm.encode(t))
        e = e0.clone().requires_grad_(True)
        m = m0.clone().requires_grad_(True)
        pos_m = []
        logits = llm.proto_logits(e[None], m[None], len(ids), layout)[0]
        ce = F.cross_entropy(logits.float(), ids)
        ge, gm = torch.autograd.grad(ce, (e, m))
        gs.append(torch.cat([ge, gm]))
        # per-position pieces of dCE/dm: the loss of position j alone
        mm = m0.clone().unsqueeze(0).expand(layout.n_m(len(ids)), -1).clone().requires_grad_(True)
        emb = torch.cat([llm.model.get_input_embeddings()(torch.tensor(layout.prefix_ids)), e0[None], mm])
        lg = llm.model(inputs_embeds=emb[None], use_cache=False).logits[0, -len(ids):]
        (gmm,) = torch.autograd.grad(F.cross_entropy(lg.float(), ids, reduction="sum"), mm)
        pos_m.append(gmm.sum(0).norm() / gmm.norm(dim=-1).sum())
        cancel.append(float(pos_m[0]))
    return torch.stack(gs), cancel


def overlaps(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) positional agreement (same token at the same position, over the longer length) and token-set Jaccard."""
    n = len(ids)
    pos, bag = torch.zeros(n, n), torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            a, b = ids[i], ids[j]
            pos[i, j] = sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))
            bag[i, j] = len(set(a) & set(b)) / len(set(a) | set(b))
    return pos, bag


def stats(G, T, ids=None):
    mean = G.mean(0)
    common = float(mean.pow(2).sum() / G.pow(2).sum(-1).mean())
    cos_mean = float(F.cosine_similarity(G, mean[None], dim=-1).mean())
    R = F.normalize(G - mean, dim=-1)
    iu = torch.triu_indices(len(G), len(G), 1)
    spec = (R @ R.T)[iu[0], iu[1]].numpy()  # pairwise cosines of the text-specific pulls
    rho = spearmanr(spec, (T @ T.T)[iu[0], iu[1]].numpy()).statistic
    out = {"common_share": round(common, 3), "cos_to_mean": round(cos_mean, 3),
           "specific_vs_teacher_spearman": round(float(rho), 3)}
    if ids is not None:
        for name, sim in zip(("positional", "bag"), overlaps(ids)):
            out[f"specific_vs_{name}_overlap_spearman"] = round(float(spearmanr(spec, sim[iu[0], iu[1]].numpy())
                                                                      .statistic), 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--data", default="out/data/stsb-train.jsonl")
    a = ap.parse_args()
    llm = load_llm()
    layout = Layout(prefix_ids=llm.resolve_prefix("bos"))
    texts = [json.loads(x)["text"] for x in open(a.data)]
    texts = [t for t in texts if 6 <= len(llm.encode(t)) <= 16][: a.texts]
    T = F.normalize(load_teacher().encode(texts), dim=-1)
    mean_tok = llm.model.get_input_embeddings().weight.detach().float().mean(0)
    ids = [llm.encode(t) for t in texts]
    G, cancel = per_text_grads(llm, layout, texts, mean_tok, mean_tok)
    out = {"texts": len(texts), "at_mean_token": {**stats(G, T, ids),
           "m_position_agreement": round(sum(cancel) / len(cancel), 3)}}
    # the same at a random text-specific point: the mean plus noise of one token embedding's scale
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(len(texts), 2, mean_tok.shape[0], generator=g) * llm.embed_std
    Gs = []
    for i, t in enumerate(texts):
        Gi, _ = per_text_grads(llm, layout, [t], mean_tok + noise[i, 0], mean_tok + noise[i, 1])
        Gs.append(Gi[0])
    out["at_random_points"] = stats(torch.stack(Gs), T, ids)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
