"""Decoding: one forward pass from proto-tokens to text, and the autoregressive reference.

One pass: the frozen LLM reads [prefix][e][m x (N-1)] and the argmax at each of the last N
positions is the output token; no sampling loop, no KV cache.
"""

from __future__ import annotations

import torch

from nar.llm import FrozenLLM, Layout, left_pad


@torch.no_grad()
def decode_ids(llm: FrozenLLM, e: torch.Tensor, m: torch.Tensor, n_tokens: list[int], layout: Layout, *,
               precision: str = "fp32", stop_at_eos: bool = False, batch_size: int = 64,
               backend: str = "torch", contexts: list[list[int]] | None = None) -> list[list[int]]:
    """Greedy token ids for each proto-token pair, one forward pass per batch.

    e: (B, D) or (B, k, D); m: (B, D) or (1, D) shared; n_tokens: B output lengths. With `stop_at_eos`, each
    output is cut before its first EOS (use it when the targets were fitted with an EOS appended).
    `backend`: which runtime runs the pass (`nar.backends`: 'torch', 'llama.cpp', or 'auto').
    contexts: an in-context encoder's per-text source ids, placed before e in the same pass (`nar.llm.Context`).
    """
    from nar.backends import get_backend
    from nar.llm import context_for

    runner = get_backend(backend, llm, precision)
    dev = llm.device
    out: list[list[int]] = []
    for lo in range(0, e.shape[0], batch_size):
        hi = min(lo + batch_size, e.shape[0])
        eb = e[lo:hi].to(dev, torch.float32)
        mb = m if m.shape[0] == 1 else m[lo:hi]
        mb = mb.to(dev, torch.float32)
        n = max(n_tokens[lo:hi])
        ctx = context_for(None if contexts is None else contexts[lo:hi], layout, dev)
        embeds = llm.proto_inputs(eb, mb, n, layout, ctx)
        pred = runner.argmax(embeds, n, None if ctx is None else ctx.full_mask(embeds.shape[1]))
        for j, k in enumerate(range(lo, hi)):
            ids = pred[j, : n_tokens[k]].tolist()
            if stop_at_eos and llm.eos_id is not None and llm.eos_id in ids:
                ids = ids[: ids.index(llm.eos_id)]
            out.append(ids)
    return out


def decode_texts(llm: FrozenLLM, e: torch.Tensor, m: torch.Tensor, n_tokens: list[int], layout: Layout,
                 **kwargs) -> list[str]:
    """Like `decode_ids`, detokenised (special tokens dropped)."""
    ids = decode_ids(llm, e, m, n_tokens, layout, **kwargs)
    return [llm.tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def token_accuracy(pred: list[int], target: list[int]) -> float:
    """Fraction of target positions whose predicted token matches (a missing prediction is wrong)."""
    if not target:
        return 0.0
    return sum(int(i < len(pred) and pred[i] == t) for i, t in enumerate(target)) / len(target)


@torch.no_grad()
def generate_greedy(llm: FrozenLLM, prompt_ids: list[list[int]], max_new_tokens: int,
                    *, stop_at_eos: bool = True) -> list[list[int]]:
    """The autoregressive reference: `model.generate` greedy with KV cache, left-padded batch."""
    pad = llm.pad_id
    ids, mask = left_pad(prompt_ids, pad)
    width = ids.shape[1]
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    if not stop_at_eos:
        kwargs["min_new_tokens"] = max_new_tokens
    gen = llm.model.generate(input_ids=ids.to(llm.device), attention_mask=mask.to(llm.device), **kwargs)
    out = []
    for row in gen[:, width:].cpu().tolist():
        if stop_at_eos and llm.eos_id in row:
            row = row[: row.index(llm.eos_id)]
        out.append(row)
    return out
