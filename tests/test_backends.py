"""One-pass backends (nar.backends): the torch backend, selection and fallback. llama.cpp only where installed."""

import importlib.util

import pytest
import torch

from nar.backends import TorchBackend, backend_report, get_backend, unavailable
from nar.decode import decode_ids
from nar.errors import NarError
from nar.llm import Layout

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def _protos(llm, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std,
            torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std)


def test_torch_backend_is_the_reference_pass(tiny_llm):
    layout = Layout((tiny_llm.tokenizer.bos_token_id,), "e")
    e, m = _protos(tiny_llm)
    embeds = tiny_llm.proto_inputs(e, m, 5, layout)
    got = TorchBackend(tiny_llm).argmax(embeds, 5)
    ref = tiny_llm.proto_logits(e, m, 5, layout).argmax(-1)
    assert got.shape == (3, 5) and torch.equal(got, ref)
    assert torch.allclose(TorchBackend(tiny_llm).logits(embeds, 5), tiny_llm.proto_logits(e, m, 5, layout))


def test_auto_falls_back_to_torch_without_a_gguf(tiny_llm):
    assert isinstance(get_backend("auto", tiny_llm), TorchBackend)
    assert isinstance(get_backend(None, tiny_llm), TorchBackend)
    report = backend_report(tiny_llm)
    assert report["torch"] == "available" and report["llama.cpp"] != "available"
    layout = Layout((tiny_llm.tokenizer.bos_token_id,), "e")
    e, m = _protos(tiny_llm)
    assert decode_ids(tiny_llm, e, m, [4, 2, 5], layout, backend="auto") == decode_ids(tiny_llm, e, m, [4, 2, 5],
                                                                                      layout)


def test_explicit_backend_that_cannot_run_says_why(tiny_llm, monkeypatch):
    with pytest.raises(NarError, match="llama.cpp"):
        get_backend("llama.cpp", tiny_llm)
    with pytest.raises(NarError, match="unknown backend"):
        get_backend("tensorrt", tiny_llm)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert "not installed" in unavailable("llama.cpp", tiny_llm)


def test_bf16_precision_keeps_torch(tiny_llm):
    be = get_backend("auto", tiny_llm, "bf16")
    assert isinstance(be, TorchBackend) and be.precision == "bf16"


def test_cli_backend_option(tiny_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["reconstruct", "the cat sat on the mat", "--model", str(tiny_path), "--precision",
                            "fp32", "--lr", "0.05", "--backend", "torch", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["reconstruct", "the cat sat on the mat", "--model", str(tiny_path), "--backend",
                            "llama.cpp", "--max-steps", "2"])
    assert r.exit_code != 0 and "llama.cpp" in str(r.exception) and "step" not in r.output  # refused before fitting


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed (optional: nar[fast])")
def test_llama_cpp_one_pass_matches_torch_on_the_default_model(nar_cache, monkeypatch):
    monkeypatch.setenv("NAR_CACHE", nar_cache)
    from nar.backends import LlamaCppBackend
    from nar.llm import load_llm

    llm = load_llm(device="cpu")
    be = get_backend("llama.cpp", llm)
    assert isinstance(be, LlamaCppBackend)
    # a real sentence's token embeddings (teacher forcing): confident predictions, unlike random proto-tokens
    ids = [llm.resolve_prefix("bos")[0]] + llm.encode("The old lighthouse keeper climbed the stairs every night.")
    embeds = llm.model.get_input_embeddings()(torch.tensor([ids, ids]))
    n = len(ids) - 1
    ref = TorchBackend(llm).argmax(embeds, n)
    got = be.argmax(embeds, n)
    assert got.shape == ref.shape
    assert (got == ref).float().mean() >= 0.75  # Q4_1 x Q8 arithmetic vs fp32: near-ties may flip
    assert torch.equal(be.argmax(embeds[:1], n), got[:1])  # batched == alone
    out = be.greedy([[1], [1]], 6)
    assert len(out) == 2 and all(len(x) == 6 for x in out) and out[0] == out[1]


def test_gguf_twin_found_after_its_recorded_environment_is_gone(tmp_path, monkeypatch):
    """The model cache is shared by environments: when the GGUF it records was deleted with its environment, the
    installed wheel's file stands in only if it is the same file."""
    import json
    from types import SimpleNamespace

    import nar.llm
    from nar.backends import gguf_for
    from nar.llm import file_digest

    installed = tmp_path / "wheel" / "model.gguf"
    installed.parent.mkdir()
    installed.write_bytes(b"gguf bytes")
    monkeypatch.setattr(nar.llm, "default_gguf_path", lambda: installed)
    cache = tmp_path / "cache"
    cache.mkdir()
    llm = SimpleNamespace(model=SimpleNamespace(name_or_path=str(cache)), fingerprint="m@1")

    def record(**meta):
        (cache / "nar_model.json").write_text(json.dumps({"fingerprint": "m@1", **meta}))

    record(source=str(tmp_path / "gone" / "model.gguf"), source_digest=file_digest(installed))
    assert gguf_for(llm) == installed
    record(source=str(tmp_path / "gone" / "model.gguf"), source_digest="0" * 32)  # another file
    assert gguf_for(llm) is None
    record(source=str(tmp_path / "gone" / "model.gguf"))  # an older cache: name (and size when recorded)
    assert gguf_for(llm) == installed
    record(source=str(tmp_path / "gone" / "other.gguf"))
    assert gguf_for(llm) is None
    record(source=str(installed), fingerprint="other@2")
    assert gguf_for(llm) is None
