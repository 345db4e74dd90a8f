"""Does the one pass think it has read the text? Hidden states of the proto-token pass against the frozen LLM's
own teacher-forced reading of the target (docs/ENCODER.md, "Fourteenth session").

    python scripts/state_probe.py [CHECKPOINT] [--limit N] [--fit K]

For each held-out sentence t_1..t_N, the encoder's (e, m) go through one pass at the true length; the row that
predicts t_i is compared, layer by layer, with the row of the LLM reading [prefix, t_1 .. t_{N-1}] that predicts
t_i (the state an autoregressive reader has when it writes t_i). Cosines are reported raw and centred (each layer's
mean teacher state over all rows removed from both, since a few massive dimensions dominate raw cosines), and
split by whether every earlier token of the one pass was right (the probe's `cascade` split). With --fit K, K of
the sentences are also fitted to exact proto-tokens (nar's fitting, default settings) and the same cosines are
read for those exact solutions: whether an exact one pass resembles the AR reading at all. With --joint W, the
same K sentences are fitted again (batched Adam on (e, m), lr 3e-2, --joint-steps steps) with the cross-entropy
plus W x the state mismatch that `--w-state` trains with (`nar.losses.state_mismatch`, blocks 10, 15, 20): whether
two vectors can make the pass both exact and reader-like.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F

from nar.config import FitConfig
from nar.data import checkpoint_splits
from nar.encoder import Encoder
from nar.fit import FitItem, fit_stream
from nar.llm import load_llm
from nar.losses import reconstruction_loss


@torch.no_grad()
def states(llm, embeds: torch.Tensor, n: int) -> torch.Tensor:
    """(layers + 1, n, D) hidden states of the last n rows of one unbatched pass."""
    with llm.autocast("auto"):
        out = llm.model(inputs_embeds=embeds[None].to(llm.dtype), use_cache=False, output_hidden_states=True)
    return torch.stack([h[0, -n:].float() for h in out.hidden_states])


@torch.no_grad()
def teacher_states(llm, layout, target: list[int]) -> torch.Tensor:
    ids = torch.tensor(list(layout.prefix_ids) + target[:-1], device=llm.device)
    return states(llm, llm.model.get_input_embeddings()(ids).float(), len(target))


def cosines(pairs, centre) -> dict:
    """pairs: [(proto (L, n, D), teacher (L, n, D), clean (n,) bool)] -> per layer mean cos, raw and centred,
    over all rows, clean rows and after-error rows; and, as the chance level, against the teacher rows of the
    next text in the list (same row index). Row 0 is left out: the teacher's row there is the prefix's
    (an attention sink with massive activations), not a state after reading a token."""
    acc = defaultdict(list)
    for j, (p, t, clean) in enumerate(pairs):
        p, t, clean = p[:, 1:], t[:, 1:], clean[1:]
        other = pairs[(j + 1) % len(pairs)][1][:, 1:]
        k = min(other.shape[1], p.shape[1])
        for kind, a, b in (("raw", p[:, :k], other[:, :k]), ("centred", p[:, :k] - centre[:, None],
                                                              other[:, :k] - centre[:, None])):
            acc[(kind, "other_text")].append(F.cosine_similarity(a, b, dim=-1))
        for kind, a, b in (("raw", p, t), ("centred", p - centre[:, None], t - centre[:, None])):
            c = F.cosine_similarity(a, b, dim=-1)  # (L, n)
            acc[(kind, "all")].append(c)
            acc[(kind, "clean")].append(c[:, clean])
            acc[(kind, "after_error")].append(c[:, ~clean])
    out = {}
    for (kind, split), cs in acc.items():
        c = torch.cat(cs, dim=1)
        out.setdefault(kind, {})[split] = {"rows": c.shape[1], "by_layer": [round(x, 3) for x in c.mean(1).tolist()]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/stsb-autoencoder")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--fit", type=int, default=0)
    ap.add_argument("--joint", type=float, default=None)
    ap.add_argument("--joint-steps", type=int, default=300)
    args = ap.parse_args()
    llm = load_llm()
    enc = Encoder.from_pretrained(args.checkpoint, llm=llm).eval()
    layout = enc.layout
    _, held, _ = checkpoint_splits(enc.meta, llm)
    held = held.take(list(range(min(args.limit, len(held)))))
    rows, teach = [], []
    with torch.no_grad():
        for src, tg in zip(held.sources, held.token_ids):
            with llm.autocast("auto"):
                e, m, _ = enc([src])
                logits, hs = llm.proto_pass(e.float(), enc.m_inputs(m.float()), len(tg), layout, enc.head.pos,
                                            layers=range(llm.model.config.num_hidden_layers + 1))
            p = torch.stack([h[0].float() for h in hs])  # the encoder's own read-out, position codes and rows
            right = logits[0].float().argmax(-1).cpu() == torch.tensor(tg)
            clean = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.bool), right[:-1]]).long(), 0).bool()
            t = teacher_states(llm, layout, tg)
            rows.append((p, t, clean))
            teach.append(t)
    centre = torch.cat([t[:, 1:] for t in teach], dim=1).mean(1)  # (L, D), rows after a token
    res = {"checkpoint": args.checkpoint, "texts": len(rows), "layers": centre.shape[0] - 1,
           "encoder": cosines(rows, centre)}
    if args.fit:
        k = min(args.fit, len(held))
        items = [FitItem(key=str(i), ids=list(held.token_ids[i])) for i in range(k)]
        fitted = sorted(fit_stream(llm, items, FitConfig(max_steps=1000)), key=lambda r: int(r.key))
        fit_rows = []
        for r in fitted:
            tg = r.token_ids
            p = states(llm, llm.proto_inputs(r.e[None], r.m[None], len(tg), layout)[0], len(tg))
            fit_rows.append((p, teacher_states(llm, layout, tg), torch.ones(len(tg), dtype=torch.bool)))
        res["fitted"] = {"texts": k, "accuracy": [round(r.accuracy, 3) for r in fitted], **cosines(fit_rows, centre)}
    if args.joint is not None:
        res["joint"] = joint_fit(llm, layout, held.token_ids[: args.fit or 8], args.joint, args.joint_steps)
    print(json.dumps(res, indent=1))


def joint_fit(llm, layout, targets, w: float, steps: int, layers=(10, 15, 20)) -> dict:
    """Fit (e, m) per text on CE + w x state mismatch; the trajectory of accuracy and mismatch."""
    torch.manual_seed(0)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    e = (emb.mean(0) + 0.01 * torch.randn(len(targets), emb.shape[1]).to(emb.device)).requires_grad_()
    m = (emb.mean(0) + 0.01 * torch.randn(len(targets), emb.shape[1]).to(emb.device)).requires_grad_()
    opt = torch.optim.Adam([e, m], lr=3e-2)
    log = []
    for step in range(steps + 1):
        rec = reconstruction_loss(llm, e, m, targets, layout, "auto", state_layers=layers)
        if step % 50 == 0:
            log.append({"step": step, "acc": round(float(rec.acc.mean()), 3),
                        "ce": round(float(rec.ce.detach().mean()), 3),
                        "mismatch": round(float(rec.state.detach().mean()), 3)})
            print(log[-1], flush=True)
        opt.zero_grad()
        (rec.ce.mean() + w * rec.state.mean()).backward()
        opt.step()
    return {"w": w, "steps": steps, "layers": list(layers), "log": log}


if __name__ == "__main__":
    main()
