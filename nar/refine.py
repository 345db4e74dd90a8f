"""Refinement passes after the one pass: Jacobi iterations of the frozen LLM over [prompt, draft].

The one pass of an encoder writes a draft of N tokens at once. A refinement pass reads the prompt and the whole
draft in ONE ordinary forward pass of the frozen LLM (its own token embeddings, KV cache of the prompt reused)
and replaces draft token i by the LLM's argmax after draft tokens 1..i-1. Its fixed point is the LLM's greedy
autoregressive reply, and after k passes at least the first k tokens equal that reply (Jacobi decoding of a
causal LM: Santilli et al. 2023, "Accelerating Transformer Inference for Translation via Parallel Decoding"). So
k passes trade cost (k passes instead of N sequential tokens) against agreement with AR decoding, and a better
draft should need fewer passes. `nar generate --refine K` and `python -m studies.refine_study` use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nar.llm import FrozenLLM, forward_kwargs, left_pad


@dataclass
class Refined:
    """steps[k][j]: text j's N token ids after pass k (steps[0] is the draft); fixed_at[j]: the first pass whose
    output equalled its input (the greedy AR reply; None if not reached within the passes run)."""

    steps: list[list[list[int]]]
    fixed_at: list[int | None]


@torch.no_grad()
def jacobi(llm: FrozenLLM, prompts: list[list[int]], drafts: list[list[int]], passes: int, *,
           precision: str = "fp32", stop_when_fixed: bool = True) -> Refined:
    """Run up to `passes` Jacobi passes of the frozen LLM for one batch (prompts left-padded together).

    prompts: each text's conditioning ids (e.g. `nar.pairs.prompt_ids`); drafts: each text's N draft ids (all the
    same N >= 1). Pass 1 reads [prompt, draft[:-1]] and caches the prompt; each later pass reads only the N-1
    draft tokens against that cache. With stop_when_fixed the loop ends once every text reached its fixed point.
    """
    if len(prompts) != len(drafts) or not prompts:
        raise ValueError("jacobi needs one draft per prompt, at least one")
    n = len(drafts[0])
    if n < 1 or any(len(d) != n for d in drafts) or any(not p for p in prompts):
        raise ValueError("drafts must share one length >= 1 and prompts must be non-empty")
    dev, model = llm.device, llm.model
    ids, mask = left_pad(prompts, llm.pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    width = ids.shape[1]
    y = torch.tensor(drafts, dtype=torch.long, device=dev)
    full = torch.cat([mask, mask.new_ones(len(prompts), n - 1)], dim=1)
    kw = forward_kwargs(full)
    steps, fixed_at = [y.tolist()], [None] * len(prompts)
    cache, first = None, None
    for k in range(1, passes + 1):
        with llm.autocast(precision):
            if cache is None:
                out = model(input_ids=torch.cat([ids, y[:, : n - 1]], dim=1), use_cache=True, **kw)
                logits = out.logits[:, width - 1:]
                first = logits[:, 0].argmax(-1)
                cache = out.past_key_values
                new = logits[:, 1:].argmax(-1)
            elif n == 1:  # nothing after the first token, which the prompt alone decides
                new = y[:, 1:]
            else:
                out = model(input_ids=y[:, : n - 1], past_key_values=cache, use_cache=True,
                            attention_mask=kw["attention_mask"], position_ids=kw["position_ids"][:, width:])
                new = out.logits.argmax(-1)
        extra = cache.get_seq_length() - width
        if extra > 0:  # a negative crop drops tokens from the end (old and new transformers alike)
            cache.crop(-extra)
        y_new = torch.cat([first[:, None], new], dim=1)
        same = (y_new == y).all(dim=1).tolist()
        for j, s in enumerate(same):
            if s and fixed_at[j] is None:
                fixed_at[j] = k
        y = y_new
        steps.append(y.tolist())
        if stop_when_fixed and all(f is not None for f in fixed_at):
            break
    return Refined(steps, fixed_at)


def refine_ids(llm: FrozenLLM, prompts: list[list[int]], drafts: list[list[int]], passes: int, *,
               precision: str = "fp32", batch_size: int = 32) -> list[list[int]]:
    """Each draft after `passes` Jacobi passes (drafts of any lengths; each batch is padded to its longest draft
    with the pad token and cut back afterwards: causal attention keeps a shorter draft unaffected)."""
    if passes <= 0:
        return [list(d) for d in drafts]
    pad = llm.pad_id
    out: list[list[int]] = []
    for lo in range(0, len(drafts), batch_size):
        chunk = [list(d) or [pad] for d in drafts[lo:lo + batch_size]]
        n = max(len(d) for d in chunk)
        res = jacobi(llm, prompts[lo:lo + batch_size], [d + [pad] * (n - len(d)) for d in chunk], passes,
                     precision=precision)
        out.extend(r[: len(d)] for r, d in zip(res.steps[-1], drafts[lo:lo + batch_size]))
    return out
