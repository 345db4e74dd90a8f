"""Refinement passes (nar.refine): Jacobi iterations of the frozen LLM reach its greedy reply."""

import pytest
import torch

from nar.refine import jacobi, refine_ids


@torch.no_grad()
def greedy(llm, prompts, n):
    """Plain greedy decoding, one prompt at a time, no cache (generate() would hold EOS back)."""
    out = []
    for p in prompts:
        ids = list(p)
        for _ in range(n):
            ids.append(int(llm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        out.append(ids[len(p):])
    return out


def _prompts(llm):
    texts = ["the cat sat on", "a dog ran in the park and", "we like"]  # different lengths: left padding
    return [llm.encode(t) for t in texts]


def test_jacobi_reaches_the_greedy_reply_and_fixes_one_token_per_pass(tiny_llm):
    prompts, n = _prompts(tiny_llm), 7
    ar = greedy(tiny_llm, prompts, n)
    draft = [[5] * n for _ in prompts]
    res = jacobi(tiny_llm, prompts, draft, passes=n + 1, stop_when_fixed=False)
    assert len(res.steps) == n + 2 and res.steps[0] == draft
    assert res.steps[-1] == ar
    for k, step in enumerate(res.steps[1:], 1):  # after pass k the first k tokens are the AR reply's
        for y, ref in zip(step, ar):
            assert y[:k] == ref[:k]
    for j, f in enumerate(res.fixed_at):  # the reported fixed point is real and the first one
        assert f is not None and res.steps[f][j] == res.steps[f - 1][j] == ar[j]
        assert all(res.steps[k][j] != res.steps[k - 1][j] for k in range(1, f))


def test_a_perfect_draft_is_fixed_after_one_pass_and_refine_ids_keeps_lengths(tiny_llm):
    prompts = _prompts(tiny_llm)
    ar = greedy(tiny_llm, prompts, 6)
    res = jacobi(tiny_llm, prompts, ar, passes=5)
    assert res.fixed_at == [1, 1, 1] and len(res.steps) == 2
    drafts = [ar[0][:2], ar[1], []]
    out = refine_ids(tiny_llm, prompts, drafts, passes=6, batch_size=2)
    assert [len(x) for x in out] == [2, 6, 0]
    assert out[0] == ar[0][:2] and out[1] == ar[1]
    assert refine_ids(tiny_llm, prompts, drafts, passes=0) == drafts


def test_jacobi_rejects_ragged_drafts(tiny_llm):
    with pytest.raises(ValueError):
        jacobi(tiny_llm, _prompts(tiny_llm), [[1, 2], [1], [3, 4]], passes=2)
    assert torch.is_grad_enabled()
