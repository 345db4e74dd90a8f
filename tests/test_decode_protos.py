import torch

from nar.config import FitConfig
from nar.decode import decode_ids, decode_texts, generate_greedy, token_accuracy
from nar.fit import fit_texts, make_layout
from nar.protos import ProtoSet

TEXTS = ["the cat sat on the mat", "birds sing in the morning"]


def _fit(tiny_llm, **kw):
    cfg = FitConfig(precision="fp32", max_steps=300, lr=5e-2, **kw)
    return cfg, fit_texts(tiny_llm, TEXTS, cfg)


def test_decode_reproduces_converged_texts(tiny_llm):
    cfg, rs = _fit(tiny_llm)
    out = decode_texts(tiny_llm, torch.stack([r.e for r in rs]), torch.stack([r.m for r in rs]),
                       [r.n_tokens for r in rs], make_layout(tiny_llm, cfg))
    assert out == TEXTS


def test_stop_at_eos(tiny_llm):
    cfg, rs = _fit(tiny_llm, append_eos=True)
    assert all(r.token_ids[-1] == tiny_llm.eos_id and r.converged for r in rs)
    layout = make_layout(tiny_llm, cfg)
    e, m = torch.stack([r.e for r in rs]), torch.stack([r.m for r in rs])
    n = [r.n_tokens for r in rs]
    cut = decode_ids(tiny_llm, e, m, n, layout, stop_at_eos=True)
    assert cut == [r.token_ids[:-1] for r in rs]
    # decoding past the end still stops at the fitted EOS
    longer = decode_ids(tiny_llm, e, m, [k + 3 for k in n], layout, stop_at_eos=True)
    assert longer == cut


def test_token_accuracy():
    assert token_accuracy([1, 2, 3], [1, 2, 4]) == 2 / 3
    assert token_accuracy([1], [1, 2]) == 0.5
    assert token_accuracy([], []) == 0.0


def test_protoset_roundtrip_is_bit_exact(tiny_llm, tmp_path):
    cfg, rs = _fit(tiny_llm)
    ps = ProtoSet.from_results(rs, make_layout(tiny_llm, cfg), {"texts": TEXTS, "fit_config": cfg.to_dict(),
                                                                 "llm": {"fingerprint": tiny_llm.fingerprint}})
    ps.save(tmp_path / "p.safetensors")
    back = ProtoSet.load(tmp_path / "p.safetensors")
    assert torch.equal(back.e, ps.e) and torch.equal(back.m, ps.m)
    assert back.token_ids == [r.token_ids for r in rs] and back.n_tokens == ps.n_tokens
    assert back.layout == ps.layout and back.meta["texts"] == TEXTS
    back.check_llm(tiny_llm)
    assert not list(tmp_path.glob(".tmp-*"))


def test_protoset_one_m_for_all_roundtrip(tiny_llm, tmp_path):
    d = tiny_llm.hidden_size
    ps = ProtoSet(torch.randn(2, d), torch.randn(1, d), [3, 2], [[4, 5, 6], [7, 8]], make_layout(tiny_llm, FitConfig()))
    ps.save(tmp_path / "s.safetensors")
    back = ProtoSet.load(tmp_path / "s.safetensors")
    assert torch.equal(back.m, ps.m) and back.m.shape == (1, d) and back.token_ids == ps.token_ids


def test_generate_greedy_batch_matches_single(tiny_llm):
    prompts = [tiny_llm.encode("the cat"), tiny_llm.encode("birds sing in the")]
    both = generate_greedy(tiny_llm, prompts, 5, stop_at_eos=False)
    alone = [generate_greedy(tiny_llm, [p], 5, stop_at_eos=False)[0] for p in prompts]
    assert both == alone and all(len(x) == 5 for x in both)


def test_protoset_from_another_model_is_refused(tiny_llm, tiny_path, tmp_path):
    import pytest

    from nar.errors import NarError
    from nar.llm import load_llm

    from .conftest import build_tiny_llm

    d, layout = tiny_llm.hidden_size, make_layout(tiny_llm, FitConfig())
    ps = ProtoSet(torch.randn(2, d), torch.randn(2, d), [3, 2], [[4, 5, 6], [7, 8]], layout,
                  {"llm": {"fingerprint": tiny_llm.fingerprint}})
    ps.save(tmp_path / "p.safetensors")
    assert ProtoSet.load(tmp_path / "p.safetensors", llm=tiny_llm).n_tokens == ps.n_tokens
    other = load_llm(str(build_tiny_llm(tmp_path / "other", seed=5)), device="cpu")
    with pytest.raises(NarError, match="fitted with LLM"):
        ProtoSet.load(tmp_path / "p.safetensors", llm=other)
    from nar.pipeline import Pipeline

    assert Pipeline(tiny_llm).decode(tmp_path / "p.safetensors") == decode_texts(tiny_llm, ps.e, ps.m, [3, 2], layout)
    with pytest.raises(NarError, match="fitted with LLM"):
        Pipeline(other).decode(ps)


def test_pipeline_reconstructs_and_fits(tiny_llm):
    from nar.pipeline import Pipeline

    nar = Pipeline(tiny_llm)
    rows = nar.reconstruct(TEXTS[:1], FitConfig(precision="fp32", max_steps=3))
    assert rows[0]["steps"] <= 3 and rows[0]["n_tokens"] == len(tiny_llm.encode(TEXTS[0]))
    assert nar.decode(nar.fit(TEXTS[:1], FitConfig(precision="fp32", max_steps=300, lr=5e-2))) == TEXTS[:1]
