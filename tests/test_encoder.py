import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from nar.build import build_corpus
from nar.config import BuildConfig, EncoderConfig, FitConfig, TrainConfig
from nar.encoder import SHAPES, Encoder, token_shapes
from nar.errors import NarError
from nar.evaluate import eval_encoder, score
from nar.generate import generate
from nar.train import train_encoder

from .conftest import TINY_CORPUS, build_tiny_llm, record_calls

FIT = dict(precision="fp32", lr=5e-2, max_steps=300, num_slots=8)
ENC = EncoderConfig(d_model=64, layers=1, heads=4, dropout=0.0, max_len=16)
RUN = dict(batch_size=8, lr=3e-3, warmup=5, precision="fp32", max_tokens=16)


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("ae")
    (d / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS[:10]))
    (d / "dev.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS[10:]))
    return d


@pytest.fixture(scope="module")
def pair_corpus(tiny_llm, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    rows = [{"id": f"p{i}", "source": f"say: {t}", "target": t} for i, t in enumerate(TINY_CORPUS)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "c"
    build_corpus(BuildConfig(input=str(d / "pairs.jsonl"), out=str(out), source_column="source",
                             target_column="target", rd_weight=0.0),
                 FitConfig(**FIT, append_eos=True), llm=tiny_llm, teacher=teacher, show_progress=False)
    return out


def _losses_spy(monkeypatch):
    import nar.monitor as mon

    seen: list[float] = []
    orig = mon.TensorBoardWriter.scalar

    def spy(self, tag, value, step):
        if tag == "encoder/loss_total":
            seen.append(value)
        orig(self, tag, value, step)

    monkeypatch.setattr(mon.TensorBoardWriter, "scalar", spy)
    return seen


def test_amortised_training_from_texts(tiny_llm, texts_file, tmp_path, monkeypatch):
    """No corpus: CE through the frozen LLM alone trains the encoder; the LLM never changes; the checkpoint
    reloads to exactly the trained encoder."""
    before = {k: v.clone() for k, v in tiny_llm.model.state_dict().items()}
    losses = _losses_spy(monkeypatch)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=40, val_every=20, save_every=20,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    assert res["train_texts"] == 10 and res["val_texts"] == 3
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(torch.equal(before[k], v) for k, v in tiny_llm.model.state_dict().items())
    for f in ("model.safetensors", "config.json", "optimizer.pt", "rng.safetensors"):
        assert (tmp_path / "run" / "last" / f).is_file()
    trained = res["encoder"]
    loaded = Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    src = ["the cat sat on the mat", "birds sing in the morning"]
    for x, y in zip(trained.predict(src), loaded.predict(src)):
        assert (torch.equal(x, y) if torch.is_tensor(x) else x == y)


def test_resume_is_bit_for_bit(tiny_llm, texts_file, tmp_path, monkeypatch):
    """A run killed after its step-20 checkpoint and resumed ends with the same weights as one never killed."""
    import nar.train as train_mod

    kw = dict(steps=30, val_every=1000, save_every=10, val_data=str(texts_file / "dev.jsonl"), **RUN)
    enc = EncoderConfig(**{**ENC.to_dict(), "dropout": 0.1})  # dropout draws from the global RNG
    whole = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), **kw), enc,
                          llm=tiny_llm, show_progress=False)["encoder"]
    real, calls = train_mod.losses, {"n": 0}

    def dies_at_21(*a, **k):
        calls["n"] += 1
        if calls["n"] == 21:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "losses", dies_at_21)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), **kw), enc, llm=tiny_llm,
                      show_progress=False)
    monkeypatch.setattr(train_mod, "losses", real)
    state = json.loads((tmp_path / "b" / "last" / "config.json").read_text())["train_state"]
    assert state["step"] == 20
    resumed = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), resume=True, **kw),
                            enc, llm=tiny_llm, show_progress=False)["encoder"]
    a, b = whole.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed with a larger --steps trains only the new steps (a warm restart of the schedule)
    steps_run = record_calls(monkeypatch, train_mod, "losses")
    longer = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), resume=True,
                                                                   **{**kw, "steps": 36}),
                           enc, llm=tiny_llm, show_progress=False)["encoder"]
    assert len(steps_run) == 6
    assert json.loads((tmp_path / "b" / "last" / "config.json").read_text())["train_state"]["step"] == 36
    assert not all(torch.equal(a[k], longer.state_tensors()[k]) for k in a)


def test_init_from_fine_tunes_a_checkpoint_with_its_own_options(tiny_llm, texts_file, tmp_path, monkeypatch):
    """--init-from starts a new run at a checkpoint's weights and encoder options, with a fresh optimiser and
    schedule; options that contradict the checkpoint are refused."""
    import nar.train as train_mod

    kw = dict(val_every=1000, save_every=1000, val_data=str(texts_file / "dev.jsonl"), **RUN)
    enc = EncoderConfig(**{**ENC.to_dict(), "n_e": 2})
    first = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), steps=6, **kw), enc,
                          llm=tiny_llm, show_progress=False)["encoder"]
    real, steps, at_start = train_mod.train_step, [], {}

    def spy(enc_, *a, **k):
        if not steps:
            at_start.update({k: v.clone() for k, v in enc_.state_tensors().items()})  # views of live weights
        steps.append(1)
        return real(enc_, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", spy)
    again = train_encoder(texts_file / "train.jsonl",
                          TrainConfig(run_dir=str(tmp_path / "b"), steps=4, init_from=str(tmp_path / "a" / "last"),
                                      **kw), EncoderConfig(), llm=tiny_llm, show_progress=False)["encoder"]
    assert len(steps) == 4  # a fresh schedule of its own steps, not the first run's remainder
    assert again.cfg == first.cfg  # the defaults passed in gave way to the checkpoint's options
    a = first.state_tensors()
    assert a.keys() == at_start.keys() and all(torch.equal(a[k], at_start[k]) for k in a)  # began at its weights
    cfg_b = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert cfg_b["train_config"]["init_from"] == str(tmp_path / "a" / "last")
    b = again.state_tensors()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # and trained on from there
    with pytest.raises(NarError, match="n_e=3"):
        train_encoder(texts_file / "train.jsonl",
                      TrainConfig(run_dir=str(tmp_path / "c"), steps=1, init_from=str(tmp_path / "a"), **kw),
                      EncoderConfig(**{**ENC.to_dict(), "n_e": 3}), llm=tiny_llm, show_progress=False)


@pytest.mark.parametrize("extra", [dict(n_e=3), dict(pos_codes=True), dict(lora_rank=2, reader_layer=-1),
                                   dict(context="source"), dict(out_norm=2.5, n_e=2), dict(init_spread=1.0),
                                   dict(head="attention", reader_layer=-1, n_e=2), dict(m_readout="gated"),
                                   dict(m_readout="gated", ctc_slots=2, pos_codes=True),
                                   dict(m_readout="blocks", read_blocks=4), dict(center_grad=True, n_e=2),
                                   dict(post_layers=1), dict(bind=True)])
def test_layout_and_reader_levers(tiny_llm, texts_file, tmp_path, extra):
    """k e-vectors, position codes and a LoRA reader: they train, round-trip exactly and generate."""
    ecfg = EncoderConfig(**{**ENC.to_dict(), **extra})
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=6, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", cfg, ecfg, llm=tiny_llm, show_progress=False)
    trained = res["encoder"]
    e, m, n = trained.predict(["the cat sat on the mat"])
    assert e.shape == ((1, extra["n_e"], tiny_llm.hidden_size) if extra.get("n_e") else (1, tiny_llm.hidden_size))
    if extra.get("pos_codes"):
        assert trained.pos_codes is not None and trained.pos_codes.abs().sum() > 0  # the codes were trained
    if extra.get("out_norm"):  # every emitted vector sits on the sphere of that radius
        for x in (e, m):
            assert torch.allclose(x.norm(dim=-1), torch.full(x.shape[:-1], 2.5), atol=1e-4)
    if extra.get("lora_rank"):
        lora = [k for k in trained.state_tensors() if "lora" in k]
        assert lora and any(trained.state_tensors()[k].abs().sum() > 0 for k in lora if "lora_B" in k)
    loaded = Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    e2, m2, n2 = loaded.predict(["the cat sat on the mat"])
    assert torch.equal(e, e2) and torch.equal(m, m2) and n == n2
    rows = generate(loaded, tiny_llm, ["the cat sat on the mat"], precision="fp32")
    assert isinstance(rows[0]["output"], str)


def test_init_spread_starts_every_text_at_its_own_point(tiny_llm):
    """spread_outputs (init_spread > 0): the untrained outputs keep the mean token embedding as their mean but
    sit at the requested distance from it; the default start leaves them nearly on top of each other."""
    from nar.encoder import make_reader

    emb = tiny_llm.model.get_input_embeddings().weight.detach().float()
    enc = Encoder(ENC, make_reader(ENC, tiny_llm), tiny_llm.hidden_size, {})
    enc.init_outputs(emb.mean(0), emb.mean(0))
    radius = 1.5 * float(emb.norm(dim=-1).mean())
    before = enc.spread_outputs(TINY_CORPUS[:10], emb.mean(0), emb.mean(0), radius)
    assert all(s < 0.2 * radius for s in before.values())
    e, m, _ = enc.predict(TINY_CORPUS[:10])
    for x in (e, m):
        assert torch.allclose(x.mean(0), emb.mean(0), atol=1e-4)
        assert abs(float((x - x.mean(0)).norm(dim=-1).mean()) - radius) < 1e-3 * radius


def test_sum_head_is_a_sum_of_per_token_parts():
    """head 'sum': the pooled vectors of a text are the sum of what each token (at its position) contributes
    alone, so what a token adds never depends on the rest of the text (the compositional lever)."""
    from nar.encoder import SumHead

    cfg = EncoderConfig(head="sum", d_model=16, heads=2, n_e=2, max_len=8, dropout=0.0)
    head = SumHead(12, 24, cfg).eval()
    states = torch.randn(1, 5, 12)
    mask = torch.tensor([[True, True, True, True, False]])
    whole = head.pool(states, mask)
    parts = sum(head.pool(states, torch.arange(5)[None] == i) for i in range(4))
    assert torch.allclose(whole, parts, atol=1e-5)
    assert not torch.allclose(whole, head.pool(states.roll(1, dims=1), mask.roll(1, dims=1)), atol=1e-3)  # order counts
    # post_layers: the same blocks, the last one moved after the sum; the pooled vectors stop being additive
    post = SumHead(12, 24, EncoderConfig(**{**cfg.to_dict(), "layers": 2, "post_layers": 1})).eval()
    assert len(post.blocks) == 1 and len(post.post) == 1
    parts = sum(post.pool(states, torch.arange(5)[None] == i) - post.slot_code for i in range(4))
    assert not torch.allclose(post.pool(states, mask) - post.slot_code, parts, atol=1e-3)
    # bind: starts as the unbound head (zero gate), stays a sum of parts, and a token's image is scaled per
    # position once the gate has moved
    bound = SumHead(12, 24, EncoderConfig(**{**cfg.to_dict(), "bind": True})).eval()
    bound.load_state_dict({**head.state_dict(), "src_gate": torch.zeros_like(bound.src_gate)})
    assert torch.allclose(bound.pool(states, mask), whole, atol=1e-6)
    with torch.no_grad():
        bound.src_gate.normal_()
    parts = sum(bound.pool(states, torch.arange(5)[None] == i) for i in range(4))
    assert torch.allclose(bound.pool(states, mask), parts, atol=1e-4)
    assert not torch.allclose(bound.pool(states, mask), whole, atol=1e-3)


def test_sum_head_without_layers_is_linear_in_the_token_embeddings():
    """head 'sum' with layers 0 (and bind): a token's part is a position-bound linear image of its embedding, one map
    for every token, so what an unseen token adds is fixed by its embedding alone: pool is affine in the states
    for a fixed mask, and the same token contributes differently at two positions."""
    from nar.encoder import SumHead

    head = SumHead(12, 24, EncoderConfig(head="sum", d_model=16, heads=2, layers=0, bind=True, max_len=8,
                                         dropout=0.0)).eval()
    assert len(head.blocks) == 0
    with torch.no_grad():
        head.src_gate.normal_()
    a, b = torch.randn(2, 1, 5, 12)
    mask = torch.tensor([[True, True, True, True, False]])

    def affine(h) -> bool:
        zero = h.pool(torch.zeros_like(a), mask)
        return torch.allclose(h.pool(a + 2 * b, mask) - zero,
                              (h.pool(a, mask) - zero) + 2 * (h.pool(b, mask) - zero), atol=1e-4)

    assert affine(head)
    one = torch.randn(12)
    first = head.pool(one.expand(1, 1, 12), torch.tensor([[True]]))
    second = head.pool(torch.stack([torch.zeros(12), one])[None], torch.tensor([[False, True]]))
    assert not torch.allclose(first, second, atol=1e-3)  # position-bound
    # an MLP block breaks the linearity: the check above can fail
    assert not affine(SumHead(12, 24, EncoderConfig(head="sum", d_model=16, heads=2, layers=1, max_len=8,
                                                    dropout=0.0)).eval())


def test_generate_compares_with_the_ar_reply_at_the_same_length(tiny_llm, texts_file, tmp_path):
    from nar.decode import generate_greedy, token_accuracy

    ecfg = EncoderConfig(**{**ENC.to_dict(), "context": "source"})
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=3, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    enc = train_encoder(texts_file / "train.jsonl", cfg, ecfg, llm=tiny_llm, show_progress=False)["encoder"]
    src = ["the cat sat on the mat", "birds sing in the morning"]
    rows = generate(enc, tiny_llm, src, precision="fp32", compare_ar=True, chat=False, batch_size=1)
    for s, r in zip(src, rows):
        ar = generate_greedy(tiny_llm, [tiny_llm.encode(s)], max(r["n_tokens"], 1))[0]
        assert r["ar_output"] == tiny_llm.tokenizer.decode(ar, skip_special_tokens=True).strip()
        assert len(ar) <= max(r["n_tokens"], 1)
        assert r["agreement"] == round(token_accuracy(_ids_of(enc, tiny_llm, s), ar), 4)
    # refinement passes: enough of them turn the one-pass draft into the AR reply
    refined = {k: generate(enc, tiny_llm, src[:1], precision="fp32", compare_ar=True, chat=False, batch_size=1,
                           refine=k)[0] for k in (0, 20)}
    assert refined[0]["output"] == rows[0]["output"] and refined[0]["agreement"] < 1.0
    assert refined[20]["agreement"] == 1.0


def _ids_of(enc, llm, source):
    from nar.generate import encoder_outputs

    return encoder_outputs(enc, llm, [source], enc.layout, "fp32", bool(enc.meta.get("stop_at_eos")))[0]


def test_context_padding_is_invisible(tiny_llm):
    """An in-context batch is left-padded: each text's one-pass logits equal its own unpadded, unbatched pass,
    and the decoded ids agree (torch backend)."""
    from nar.decode import decode_ids
    from nar.llm import Context, Layout
    from nar.losses import reconstruction_loss

    layout = Layout(prefix_ids=(1,))
    g = torch.Generator().manual_seed(0)
    d = tiny_llm.hidden_size
    e, m = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
    rows = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14]]
    ctx = Context.from_ids(rows, layout)
    assert ctx.mask.sum(1).tolist() == [7, 2, 4]
    batched = tiny_llm.proto_logits(e, m, 5, layout, context=ctx)
    for j, r in enumerate(rows):
        alone = tiny_llm.proto_logits(e[j:j + 1], m[j:j + 1], 5, layout, context=Context.from_ids([r], layout))
        assert torch.allclose(batched[j], alone[0], atol=1e-5)
    rec = reconstruction_loss(tiny_llm, e, m, [[3, 4, 5, 6, 7]] * 3, layout, context=ctx)
    assert rec.ce.shape == (3,)
    ids = decode_ids(tiny_llm, e, m, [5, 5, 5], layout, contexts=rows)
    assert ids == batched.argmax(-1).tolist()
    # the context changes the output: the source is really read
    plain = tiny_llm.proto_logits(e, m, 5, layout)
    assert not torch.allclose(plain, batched, atol=1e-3)


def test_scores_expose_repetition(tiny_llm):
    tok = tiny_llm.tokenizer
    tgt = [tiny_llm.encode("the cat sat on the mat")]
    perfect = score(tgt, tgt, tok)
    assert perfect["token_acc"] == 1 and perfect["exact_match"] == 1
    assert perfect["one_minus_wer"] == pytest.approx(1) and perfect["chrf"] == pytest.approx(1)
    the = tiny_llm.encode("the")[0]
    collapsed = score([[the] * 6], tgt, tok)
    assert collapsed["distinct_share"] == pytest.approx(1 / 6) and collapsed["exact_match"] == 0
    assert collapsed["target_distinct_share"] == pytest.approx(5 / 6)
    assert 0 < collapsed["token_acc"] < 1 and collapsed["chrf"] < perfect["chrf"]


def test_by_position_scores_each_output_position_over_the_targets_that_long():
    from nar.evaluate import by_position

    assert by_position([[1, 2, 3], [1, 5]], [[1, 2, 4], [1, 2]]) == [1.0, 0.5, 0.0]
    assert by_position([[7]], [[7, 8, 9]]) == [1.0, 0.0, 0.0]  # a missing token is wrong


def test_eval_encoder_reports_baselines(tiny_llm, teacher, texts_file, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=4, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    ev = eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, teacher=teacher, precision="fp32")
    methods = {(r["split"], r["method"]) for r in ev["rows"]}
    assert methods == {(s, m) for s in ("held-out", "train")
                       for m in ("encoder", "nearest neighbour", "position mode")}
    held = [r for r in ev["rows"] if r["split"] == "held-out"]
    assert all(r["texts"] == 3 for r in held)
    enc = next(r for r in held if r["method"] == "encoder")
    assert sum(b["texts"] for b in enc["by_length"]) == 3
    assert all(0 <= a <= 1 for a in enc["by_position"]) and len(enc["by_position"]) >= 1
    # evaluating on the training file is refused: held out means unseen
    with pytest.raises(NarError, match="training texts"):
        eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, teacher=teacher, data=str(texts_file / "train.jsonl"))


def test_corpus_regression_can_overfit_a_handful(tiny_llm, pair_corpus, tmp_path):
    """From a corpus folder the fitted proto-tokens add a regression target; a handful is learned."""
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=250, val_every=1000, save_every=1000, val_frac=0.1,
                      w_reg=0.1, **{**RUN, "max_tokens": 32})
    res = train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    ev = eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, precision="fp32")
    enc_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "encoder")
    mode_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "position mode")
    assert res["train_texts"] == 12
    assert enc_train["token_acc"] >= 0.8 and enc_train["token_acc"] > mode_train["token_acc"]


def test_fingerprint_mismatch_and_bad_sources(tiny_llm, texts_file, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=2, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    from nar.llm import load_llm

    other = load_llm(str(build_tiny_llm(tmp_path / "other", seed=3)), device="cpu")
    with pytest.raises(NarError, match="trained for LLM"):
        Encoder.from_pretrained(tmp_path / "run", llm=other)
    with pytest.raises(NarError, match="trained for LLM"):
        generate(res["encoder"], other, ["hi"])
    with pytest.raises(NarError, match="empty source"):
        generate(res["encoder"], tiny_llm, ["  "])
    (tmp_path / "run" / "last" / "model.safetensors").unlink()
    with pytest.raises(NarError, match="incomplete"):
        Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    with pytest.raises(NarError, match="missing model.safetensors"):
        train_encoder(texts_file / "train.jsonl", TrainConfig(**{**cfg.to_dict(), "resume": True}), ENC, llm=tiny_llm,
                      show_progress=False)


def test_train_and_generate_cli_json(tiny_path, texts_file, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train-encoder", str(texts_file / "train.jsonl"), "--val-data",
                                 str(texts_file / "dev.jsonl"), "--run-dir", str(run), "--model", str(tiny_path),
                                 "--steps", "3", "--d-model", "64", "--layers", "1", "--precision", "fp32", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 3
    src = tmp_path / "src.txt"
    src.write_text("the cat\nbirds sing\nthe sun is warm\n")
    r = CliRunner().invoke(app, ["generate", str(run), "--input", str(src), "--model", str(tiny_path),
                                 "--precision", "fp32", "--json", "--output", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0, r.output
    objs = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [o["source"] for o in objs] == ["the cat", "birds sing", "the sun is warm"]
    assert all({"source", "output", "seconds"} <= set(o) for o in objs)
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_make_data_stsb(tmp_path):
    from nar.data import stsb_sentences

    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (tmp_path / "train.tsv").write_text(head + "0\tg\tf\ty\t1\ts\ts\tA cat sits.\tA dog runs.\t1.0\n"
                                               "1\tg\tf\ty\t2\ts\ts\tA cat sits.\tBirds \"sing\".\t2.0\n")
    (tmp_path / "dev.tsv").write_text(head + "0\tg\tf\ty\t1\ts\ts\tA dog runs.\tRain falls.\t1.0\n")
    res = stsb_sentences(tmp_path, tmp_path / "out")
    assert res["train"] == 3 and res["dev"] == 1  # duplicates dropped; dev keeps only unseen sentences
    dev = [json.loads(x)["text"] for x in (tmp_path / "out" / "stsb-dev.jsonl").read_text().splitlines()]
    train = [json.loads(x)["text"] for x in (tmp_path / "out" / "stsb-train.jsonl").read_text().splitlines()]
    assert dev == ["Rain falls."] and 'Birds "sing".' in train


def test_warm_start_from_encoder(tiny_llm, teacher, pair_corpus, tmp_path, monkeypatch):
    """build-corpus --warm-start encoder: every new text starts at the encoder's prediction for its source."""
    import nar.build as build
    from nar.build import encoder_init

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=5, val_every=1000, save_every=1000,
                      **{**RUN, "max_tokens": 32})
    trained = train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)["encoder"]
    rows = [{"id": f"n{i}", "source": f"repeat: {t}", "target": t} for i, t in enumerate(["a new text", "another"])]
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    e_ref, m_ref, _ = trained.predict([r["source"] for r in rows])
    seen = {}
    real = build.fit_stream

    def spy(llm, items, fcfg, **kw):
        seen.update({it.key: (it.init_e.clone(), it.init_m.clone()) for it in items})
        return real(llm, items, fcfg, **kw)

    monkeypatch.setattr(build, "fit_stream", spy)
    bcfg = BuildConfig(input=str(src), out=str(tmp_path / "c"), source_column="source", target_column="target",
                       rd_weight=0.0, warm_start="encoder", warm_start_encoder=str(tmp_path / "run" / "last"))
    run = build_corpus(bcfg, FitConfig(**{**FIT, "max_steps": 20}, append_eos=True), llm=tiny_llm, teacher=teacher,
                       show_progress=False)
    assert run["fitted"] == 2
    for i, r in enumerate(rows):
        torch.testing.assert_close(seen[r["id"]][0], e_ref[i])
        torch.testing.assert_close(seen[r["id"]][1], m_ref[i])
    with pytest.raises(NarError, match="layout"):
        encoder_init(tmp_path / "run" / "last", tiny_llm, FitConfig(**FIT, prefix="none"), ["x"])
    with pytest.raises(NarError, match="warm-start-encoder"):
        BuildConfig(input=str(src), out=str(tmp_path / "d"), warm_start="encoder")


def test_evaluation_sees_the_training_subset_of_a_limited_run(tiny_llm, texts_file, tmp_path, monkeypatch):
    """With --limit, eval-encoder's "train" rows and retrieval baseline use the texts the run trained on."""
    import nar.train as tr
    from nar.data import checkpoint_splits

    seen: set[str] = set()
    real = tr.losses

    def spy(enc, llm, batch, layout, cfg, *rest):
        seen.update(batch.ids)
        return real(enc, llm, batch, layout, cfg, *rest)

    monkeypatch.setattr(tr, "losses", spy)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=4, val_every=1000, save_every=1000, limit=4,
                      val_data=str(texts_file / "dev.jsonl"), **{**RUN, "batch_size": 4})
    enc = train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)["encoder"]
    train, held, _ = checkpoint_splits(enc.meta, tiny_llm)
    assert len(train) == 4 and set(train.ids) == seen
    assert not set(held.ids) & seen


def test_ctc_loss_is_the_sum_over_alignments(tiny_llm):
    """The CTC term is -log of the summed probability of every slot sequence that collapses to the target
    (enumerated by brute force: 2 tokens over 2 x 2 slots), divided by the target's length."""
    import itertools
    import math

    from nar.decode import ctc_collapse
    from nar.llm import Layout
    from nar.losses import ctc_reconstruction_loss

    torch.manual_seed(0)
    d, layout, blank, target = tiny_llm.hidden_size, Layout(prefix_ids=(1,)), 0, [5, 7]
    e, m = torch.randn(1, d), torch.randn(1, d)
    loss = ctc_reconstruction_loss(tiny_llm, e, m, [target], layout, slots=2, blank=blank)
    with torch.no_grad():
        p = tiny_llm.proto_logits(e, m, 4, layout).float().softmax(-1)[0]  # (4 slots, V)
    paths = [s for s in itertools.product((blank, 5, 7), repeat=4) if ctc_collapse(list(s), blank) == target]
    assert len(paths) == 15  # blank* 5+ blank* 7+ blank* in 4 slots: C(6, 4) ways
    total = sum(math.prod(float(p[t, s]) for t, s in enumerate(path)) for path in paths)
    assert float(loss) == pytest.approx(-math.log(total) / len(target), rel=1e-4)
    with pytest.raises(NarError, match="blank"):
        ctc_reconstruction_loss(tiny_llm, e, m, [[5, 0]], layout, slots=2, blank=blank)


def test_ctc_collapse():
    from nar.decode import ctc_collapse

    assert ctc_collapse([0, 5, 5, 0, 5, 7, 7, 0], blank=0) == [5, 5, 7]
    assert ctc_collapse([5, 9, 0, 7], blank=0, eos=9) == [5]


def test_ctc_encoder_trains_and_reads_out_by_collapsing(tiny_llm, texts_file, tmp_path, monkeypatch):
    """With ctc_slots the one pass has r x N slots: the CTC loss falls, the blank is chosen and recorded, and
    generation is the collapsed argmax of exactly those slots."""
    from nar.decode import ctc_collapse, decode_ids
    from nar.generate import encoder_outputs

    losses = _losses_spy(monkeypatch)
    ecfg = EncoderConfig(**{**ENC.to_dict(), "ctc_slots": 2})
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=40, val_every=20, save_every=20,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", cfg, ecfg, llm=tiny_llm, show_progress=False)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    loaded = Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    assert loaded.cfg.ctc_slots == 2 and loaded.cfg.ctc_blank == tiny_llm.tokenizer.unk_token_id
    src = ["the cat sat on the mat", "birds sing in the morning"]
    e, m, n = loaded.predict(src)
    raw = decode_ids(tiny_llm, e, m, [2 * k for k in n], loaded.layout)
    assert [len(x) for x in raw] == [2 * k for k in n]
    out = encoder_outputs(loaded, tiny_llm, src, loaded.layout, "fp32", stop_at_eos=False)
    assert out == [ctc_collapse(x, loaded.cfg.ctc_blank) for x in raw]
    assert res["val"]["token_acc"] >= 0 and all(loaded.cfg.ctc_blank not in x for x in out)


def test_gated_readout_starts_as_paper_a_and_is_a_function_of_m_alone(tiny_llm):
    """m_readout 'gated' at its start gives exactly the repeated-m pass; after any change of its weights the
    m positions' inputs still depend on the text only through the emitted m."""
    from nar.encoder import make_reader
    from nar.llm import Layout

    layout, d = Layout(prefix_ids=(1,)), tiny_llm.hidden_size
    cfg = EncoderConfig(**{**ENC.to_dict(), "m_readout": "gated"})
    enc = Encoder(cfg, make_reader(cfg, tiny_llm), d, {})
    torch.manual_seed(0)
    e, m = torch.randn(2, d), torch.randn(2, d)
    with torch.no_grad():
        assert torch.allclose(tiny_llm.proto_logits(e, enc.m_inputs(m), 5, layout),
                              tiny_llm.proto_logits(e, m, 5, layout), atol=1e-5)
        for p in (enc.head.read_w, enc.head.read_g, enc.head.read_b):
            p.add_(torch.randn_like(p) * 0.1)
    m_in = enc.m_inputs(m)
    assert m_in.shape == (2, cfg.max_len, d)
    assert torch.equal(enc.m_inputs(m[1:]), m_in[1:])  # row by row: no text's input depends on another's m
    assert not torch.allclose(m_in[:, 0], m_in[:, 1])  # the positions now read different images of m


def test_block_readout_gives_each_position_its_own_part_of_m(tiny_llm):
    """m_readout 'blocks': position j's input depends only on block (j mod read_blocks) of m at the start."""
    from nar.encoder import make_reader

    d = tiny_llm.hidden_size
    cfg = EncoderConfig(**{**ENC.to_dict(), "m_readout": "blocks", "read_blocks": 4})
    enc = Encoder(cfg, make_reader(cfg, tiny_llm), d, {})
    m = torch.randn(1, d)
    bumped = m.clone()
    bumped[0, : d // 4] += 1.0  # change block 0 only
    delta = (enc.m_inputs(bumped) - enc.m_inputs(m))[0].detach().norm(dim=-1)
    assert torch.all(delta[0::4] > 0.1) and torch.all(delta[1::4] == 0) and torch.all(delta[3::4] == 0)


def test_center_grad_sends_the_shared_pull_to_the_biases_only(tiny_llm):
    """center_grad: in training the output weights see batch-centred features (every e/m batch mean is the output
    bias), a loss whose gradient is the same for every text reaches only the biases, a text-specific one the
    rest of the head; outside training the running mean, saved with the checkpoint, takes the batch's place."""
    from nar.encoder import make_reader

    srcs = ["a red cat", "two dogs run fast", "the sun"]
    cfg = EncoderConfig(**{**ENC.to_dict(), "center_grad": True})
    torch.manual_seed(0)
    enc = Encoder(cfg, make_reader(cfg, tiny_llm), tiny_llm.hidden_size, {})
    e, m, _ = enc(srcs)
    assert torch.allclose(m.mean(0), enc.head.out_m.bias, atol=1e-5)
    assert torch.allclose(e.mean(0)[0], enc.head.out_e.bias, atol=1e-5)
    (e.sum() + m.sum()).backward()  # d loss / d output = 1 for every text: all shared
    assert enc.head.out_m.bias.grad.abs().min() > 0
    assert enc.head.out_m.weight.grad.abs().max() < 1e-5 and enc.head.inp.weight.grad.abs().max() < 1e-5
    enc.zero_grad()
    e, m, _ = enc(srcs)
    (m[0].sum() - m[1].sum()).backward()  # opposite pulls on two texts: text-specific
    assert enc.head.inp.weight.grad.abs().max() > 0
    running = enc.head.h_mean.clone()
    assert running.abs().max() > 0
    enc.eval()
    m_one = enc(srcs[:1])[1]  # one text alone: no batch to centre on, the running mean is used
    assert torch.allclose(m_one, enc(srcs)[1][:1], atol=1e-5)
    again = Encoder(cfg, make_reader(cfg, tiny_llm), tiny_llm.hidden_size, {})
    again.load_state_tensors(enc.state_tensors())  # what a checkpoint's model.safetensors holds
    assert torch.equal(again.head.h_mean, running)
    assert torch.allclose(again.predict(srcs[:1])[1], m_one, atol=1e-5)


def test_logit_adjusted_loss_shifts_the_cross_entropy_not_the_argmax(tiny_llm, texts_file, tmp_path):
    """logit_adjust: the CE is taken over logits + tau * log(prior) (frequent tokens get a head start, so the
    encoder must win them by a margin), the accuracy and decoding read the raw logits; a run trains with it."""
    import torch.nn.functional as F

    from nar.llm import Layout
    from nar.losses import reconstruction_loss
    from nar.train import token_prior_bias

    bias = token_prior_bias([[3, 3, 3, 5], [3, 7]], vocab=10, tau=2.0)
    assert bias[3] > bias[5] == bias[7] > bias[0] == bias[9]  # counts 4 > 1 = 1 > 0 (add-one smoothed)
    assert torch.allclose(bias[3] - bias[0], 2.0 * torch.log(torch.tensor(5.0)))
    layout = Layout(prefix_ids=(tiny_llm.tokenizer.bos_token_id or 0,))
    torch.manual_seed(0)
    e, m = torch.randn(2, tiny_llm.hidden_size), torch.randn(2, tiny_llm.hidden_size)
    targets = [[5, 6, 7], [8, 9]]
    vocab = tiny_llm.model.get_output_embeddings().weight.shape[0]
    big = token_prior_bias([[5, 6, 7]] * 50, vocab, 1.0)
    plain = reconstruction_loss(tiny_llm, e, m, targets, layout)
    adj = reconstruction_loss(tiny_llm, e, m, targets, layout, logit_bias=big)
    logits = tiny_llm.proto_logits(e, m, 3, layout).float()
    want = F.cross_entropy((logits[0] + big), torch.tensor([5, 6, 7]))
    assert torch.allclose(adj.ce[0], want, atol=1e-5)
    assert adj.ce[0] < plain.ce[0] and adj.ce[1] > plain.ce[1]  # text 0's tokens are the frequent ones
    assert torch.equal(adj.acc, plain.acc)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=4, val_every=4, save_every=4, logit_adjust=1.0,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["train_config"]["logit_adjust"] == 1.0
    assert res["steps"] == 4
    with pytest.raises(NarError, match="logit_adjust"):
        TrainConfig(logit_adjust=-1.0)


def test_after_error_weight_scales_the_tokens_after_the_first_wrong_one(tiny_llm, texts_file, tmp_path, monkeypatch):
    """after_error_weight w: in each text the tokens up to and including the first argmax error weigh 1 in the
    cross-entropy, the later ones w (right or wrong); accuracy is unchanged; a run trains with it."""
    import torch.nn.functional as F

    from nar.llm import Layout
    from nar.losses import reconstruction_loss

    targets = [[1, 2, 3, 4, 5], [6, 7, 8], [1, 2, 3, 4, 5]]
    right = [[1, 1, 0, 1, 0], [1, 1, 1], [0, 1, 1, 1, 1]]  # first errors at 2, none, 0
    logits = torch.randn(3, 5, 12)
    for j, (t, r) in enumerate(zip(targets, right)):
        for i, (tok, ok) in enumerate(zip(t, r)):
            logits[j, i, tok] = 20.0 if ok else -20.0
    monkeypatch.setattr(tiny_llm, "proto_pass", lambda *a, **k: (logits, []))
    e, m, layout = torch.zeros(3, 4), torch.zeros(3, 4), Layout(prefix_ids=(0,))
    plain = reconstruction_loss(tiny_llm, e, m, targets, layout)
    half = reconstruction_loss(tiny_llm, e, m, targets, layout, after_error=0.5)
    for j, (t, w) in enumerate(zip(targets, ([1, 1, 1, .5, .5], [1, 1, 1], [1, .5, .5, .5, .5]))):
        tok = F.cross_entropy(logits[j, : len(t)], torch.tensor(t), reduction="none")
        assert torch.allclose(half.ce[j], (tok * torch.tensor(w)).sum() / len(t))
        assert torch.allclose(plain.ce[j], tok.mean())
    assert torch.equal(half.acc, plain.acc)
    monkeypatch.undo()
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=4, val_every=4, save_every=4, after_error_weight=0.2,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    assert train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)["steps"] == 4
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["train_config"][
        "after_error_weight"] == 0.2
    with pytest.raises(NarError, match="after_error_weight"):
        TrainConfig(after_error_weight=1.5)


def test_token_table_learns_only_the_rows_of_trained_tokens_and_saves_them_sparse(tiny_llm, texts_file, tmp_path):
    """token_table: a zero-started row per token id, trained at table_lr without decay; rows of tokens that no
    training source holds stay exactly zero, and the checkpoint stores only the trained rows, reloading to the
    same encoder."""
    cfg = EncoderConfig(**{**ENC.to_dict(), "head": "sum", "token_table": 4})
    tcfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=6, val_every=6, save_every=6, table_lr=0.05,
                       val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = train_encoder(texts_file / "train.jsonl", tcfg, cfg, llm=tiny_llm, show_progress=False)
    enc = res["encoder"]
    table = enc.head.tok_table.detach()
    seen = {t for line in (texts_file / "train.jsonl").read_text().splitlines()
            for t in tiny_llm.tokenizer(json.loads(line)["text"], add_special_tokens=False).input_ids}
    trained = set(table.abs().sum(1).nonzero().flatten().tolist())
    assert trained and trained <= seen
    stored = enc.state_tensors()
    assert "head.tok_table" not in stored and set(stored["head.tok_table.rows"].tolist()) == trained
    loaded = Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    assert torch.equal(loaded.head.tok_table, table.cpu())
    src = ["the cat sat on the mat"]
    assert torch.equal(loaded.predict(src)[1], enc.predict(src)[1])
    with pytest.raises(NarError, match="token_table"):
        EncoderConfig(head="attention", token_table=4)


def test_init_from_may_grow_a_token_table_starting_as_the_checkpoint(tiny_llm, texts_file, tmp_path, monkeypatch):
    """--init-from a checkpoint without a token table, with --token-table R: the table's rows start at zero, so
    the first step sees exactly the checkpoint's encoder."""
    import nar.train as train_mod

    kw = dict(val_every=1000, save_every=1000, val_data=str(texts_file / "dev.jsonl"), **RUN)
    sum_head = EncoderConfig(**{**ENC.to_dict(), "head": "sum"})
    train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), steps=3, **kw), sum_head,
                  llm=tiny_llm, show_progress=False)
    base = Encoder.from_pretrained(tmp_path / "a" / "last", llm=tiny_llm)
    src = ["the cat sat on the mat", "birds sing in the morning"]
    real, first = train_mod.train_step, []

    def spy(enc_, *a, **k):
        if not first:
            first.append(enc_.predict(src))
        return real(enc_, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", spy)
    grown = train_encoder(texts_file / "train.jsonl",
                          TrainConfig(run_dir=str(tmp_path / "b"), steps=3, init_from=str(tmp_path / "a" / "last"),
                                      **kw), EncoderConfig(token_table=4), llm=tiny_llm, show_progress=False)["encoder"]
    assert grown.cfg == base.cfg.replace(token_table=4)
    for x, y in zip(first[0], base.predict(src)):
        assert (torch.allclose(x, y) if torch.is_tensor(x) else x == y)
    assert grown.head.tok_table.abs().sum() > 0


def test_unk_below_reads_rare_source_tokens_as_one_learned_vector(tiny_llm, texts_file, tmp_path):
    """unk_below K: tokens seen fewer than K times in the training sources are read as the head's one unknown
    vector: two sources that differ only in such tokens get the same proto-tokens, sources that differ in a known
    token do not; the known set is this run's and survives a reload; an old checkpoint may grow the vector, and
    with unk_mode 'mark' a rare token keeps its own input besides it, with 'shape' it is read as its word shape's
    vector."""
    tok = tiny_llm.tokenizer
    lines = [json.loads(x)["text"] for x in (texts_file / "train.jsonl").read_text().splitlines()]
    counts: dict[int, int] = {}
    for t in lines:
        for i in tok(t, add_special_tokens=False).input_ids:
            counts[i] = counts.get(i, 0) + 1
    kw = dict(val_every=4, save_every=4, val_data=str(texts_file / "dev.jsonl"), **RUN)
    cfg = EncoderConfig(**{**ENC.to_dict(), "head": "sum", "unk_below": 2})
    res = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "run"), steps=4, **kw), cfg,
                        llm=tiny_llm, show_progress=False)
    enc = res["encoder"]
    known = enc.head.known.cpu()
    assert [i for i, c in counts.items() if not known[i]] == [i for i, c in counts.items() if c < 2]
    once = [i for i, c in counts.items() if c == 1]
    unseen = [i for i in range(len(tok)) if i not in counts and i not in tok.all_special_ids][:50]
    assert once and not known[unseen].any() and known[tok.all_special_ids].all()
    assert enc.head.unk.detach().abs().sum() > 0  # trained: rare tokens in the sources reached it
    frequent, second = sorted(counts, key=counts.get)[-2:]

    @torch.no_grad()
    def e(ids):  # the head on given token ids (no round trip through text)
        enc.eval()
        x, ones = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
        return enc.head(enc.reader({"input_ids": x, "attention_mask": ones}), ones.bool(), x)[0]

    assert torch.equal(e([frequent, once[0], frequent]), e([frequent, unseen[0], frequent]))
    assert not torch.equal(e([frequent, second, frequent]), e([frequent, once[0], frequent]))
    loaded = Encoder.from_pretrained(tmp_path / "run" / "last", llm=tiny_llm)
    assert torch.equal(loaded.head.known.cpu(), known)
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["data"]["unknown_tokens"] == len(once)
    # grown onto a checkpoint without it: same options otherwise, the vector starts at zero
    sum_head = EncoderConfig(**{**ENC.to_dict(), "head": "sum"})
    train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), steps=2, **kw), sum_head,
                  llm=tiny_llm, show_progress=False)
    grown = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), steps=2,
                          init_from=str(tmp_path / "a" / "last"), **kw), EncoderConfig(unk_below=2, unk_mode="mark"),
                          llm=tiny_llm, show_progress=False)["encoder"]
    assert grown.cfg == sum_head.replace(unk_below=2, unk_mode="mark") and not grown.head.known.all()
    enc = grown  # 'mark': a rare token is read as itself plus the unknown vector, so which one it is still counts
    assert grown.head.unk.detach().abs().sum() > 0
    assert not torch.equal(e([frequent, once[0], frequent]), e([frequent, unseen[0], frequent]))
    marked = e([frequent, once[0], frequent])
    saved = grown.head.known.clone()
    grown.head.known.fill_(True)  # the same weights reading every token as known: the unknown vector no longer added
    assert not torch.equal(e([frequent, once[0], frequent]), marked)
    grown.head.known.copy_(saved)
    # 'shape': one unknown vector per word shape, the shapes kept in the checkpoint
    shaped = train_encoder(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "c"), steps=2,
                           init_from=str(tmp_path / "a" / "last"), **kw), EncoderConfig(unk_below=2, unk_mode="shape"),
                           llm=tiny_llm, show_progress=False)["encoder"]
    assert shaped.cfg == sum_head.replace(unk_below=2, unk_mode="shape")
    shapes = token_shapes(tok).long()
    assert torch.equal(shaped.head.shape.cpu().long(), shapes) and shaped.head.unk.shape[0] == SHAPES
    assert torch.equal(Encoder.from_pretrained(tmp_path / "c" / "last", llm=tiny_llm).head.shape.cpu().long(), shapes)
    enc, rows = shaped, shaped.head.unk.detach()
    a = once[0]
    same = [i for i in unseen if shapes[i] == shapes[a]]
    other = [i for i in unseen if not torch.equal(rows[shapes[i]], rows[shapes[a]])]
    assert same and other and rows[shapes[a]].abs().sum() > 0
    assert torch.equal(e([frequent, a, frequent]), e([frequent, same[0], frequent]))
    assert not torch.equal(e([frequent, a, frequent]), e([frequent, other[0], frequent]))


def test_token_shapes_reads_word_starts_and_kinds_from_each_tokenizer_family():
    """token_shapes: (word start x kind x longer than 3 characters), with the word start read from byte-level BPE's
    'Ġ', SentencePiece's '▁' (whose decoder strips the space of a lone piece) and WordPiece's missing '##'."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    def fast(model, decoder):
        t = Tokenizer(model)
        t.decoder = decoder
        return PreTrainedTokenizerFast(tokenizer_object=t)

    def shape(start, kind, long):  # kind: 0 lower-case, 1 capital first, 2 digits, 3 other
        return (start * 4 + kind) * 2 + long

    bpe = fast(models.BPE({"\u0120the": 0, "The": 1, "\u012042": 2, "\u0120beautiful": 3, "ing": 4, "!": 5}, []),
               decoders.ByteLevel())
    assert token_shapes(bpe).tolist() == [shape(1, 0, 0), shape(0, 1, 0), shape(1, 2, 0), shape(1, 0, 1),
                                          shape(0, 0, 0), shape(0, 3, 0)]
    sentencepiece = fast(models.BPE({"\u2581The": 0, "re": 1, "\u2581Paris": 2}, []), decoders.Metaspace())
    assert token_shapes(sentencepiece).tolist() == [shape(1, 1, 0), shape(0, 0, 0), shape(1, 1, 1)]
    wordpiece = fast(models.WordPiece({"[UNK]": 0, "the": 1, "##ing": 2, "Paris": 3, "2024": 4}, unk_token="[UNK]"),
                     decoders.WordPiece())
    assert token_shapes(wordpiece).tolist() == [shape(1, 3, 1), shape(1, 0, 0), shape(0, 0, 0), shape(1, 1, 1),
                                                shape(1, 2, 1)]
    assert max(token_shapes(bpe).tolist()) < SHAPES
    with pytest.raises(NarError, match="unk_below"):
        EncoderConfig(head="attention", unk_below=2)


def test_state_matching_pulls_the_pass_towards_the_llms_own_reading(tiny_llm, texts_file, tmp_path):
    """reading_states: row i is the frozen LLM's state after reading [prefix, t_1 .. t_i], as an unbatched,
    unpadded pass gives it; state_mismatch is 0 for states equal to the reading, ignores row 0 and padding, and
    its gradient moves (e, m) towards the reading; a run trains with w_state and refuses what it cannot match."""
    from nar.llm import Layout
    from nar.losses import pad_targets, reconstruction_loss, state_mismatch

    layout = Layout(prefix_ids=(tiny_llm.tokenizer.bos_token_id or 0,))
    targets = [[5, 6, 7, 8], [9, 10]]
    tgt = pad_targets(targets)
    layers = (1, 2)
    reading = tiny_llm.reading_states(tgt, layout, layers)
    alone = tiny_llm.model(input_ids=torch.tensor([list(layout.prefix_ids) + targets[1][:1]]),
                           output_hidden_states=True).hidden_states
    for k, r in zip(layers, reading):
        assert r.shape == (2, 4, tiny_llm.hidden_size)
        assert torch.allclose(r[1, :2], alone[k][0], atol=1e-5)
    valid = tgt != -100
    assert torch.allclose(state_mismatch(reading, reading, valid), torch.zeros(2), atol=1e-6)
    noisy = [r.clone() for r in reading]
    for r in noisy:
        r[:, 0] = torch.randn_like(r[:, 0])  # row 0 (the prefix's row) and text 1's padding do not count
        r[1, 2:] = torch.randn_like(r[1, 2:])
    assert torch.allclose(state_mismatch(noisy, reading, valid), torch.zeros(2), atol=1e-6)
    torch.manual_seed(0)
    e = torch.randn(2, tiny_llm.hidden_size, requires_grad=True)
    m = torch.randn(2, tiny_llm.hidden_size, requires_grad=True)
    opt = torch.optim.Adam([e, m], lr=0.05)
    first = None
    for _ in range(30):
        rec = reconstruction_loss(tiny_llm, e, m, targets, layout, state_layers=layers)
        first = float(rec.state.mean().detach()) if first is None else first
        opt.zero_grad()
        rec.state.mean().backward()
        opt.step()
    assert float(rec.state.mean().detach()) < 0.8 * first
    assert reconstruction_loss(tiny_llm, e, m, targets, layout).state is None
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=3, val_every=3, save_every=3, w_state=0.5,
                      state_layers=(1, 2), val_data=str(texts_file / "dev.jsonl"), **RUN)
    assert train_encoder(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)["steps"] == 3
    with pytest.raises(NarError, match="state-layers"):
        train_encoder(texts_file / "train.jsonl", cfg.replace(state_layers=(99,)), ENC, llm=tiny_llm,
                      show_progress=False)
    with pytest.raises(NarError, match="w_state"):
        TrainConfig(w_state=-1.0)


def test_a_run_with_independent_rows_records_them_and_may_start_from_a_causal_checkpoint(tiny_llm, texts_file,
                                                                                          tmp_path):
    """--rows independent: the checkpoint's layout records the rows and decoding reads them from there; a run
    may go on from a checkpoint trained under the other rows (same input, other attention)."""
    from nar.encoder import Encoder

    base = TrainConfig(run_dir=str(tmp_path / "causal"), steps=2, val_every=2, save_every=2,
                       val_data=str(texts_file / "dev.jsonl"), **RUN)
    train_encoder(texts_file / "train.jsonl", base, ENC, llm=tiny_llm, show_progress=False)
    assert Encoder.from_pretrained(tmp_path / "causal" / "last", llm=tiny_llm).layout.rows == "causal"
    ind = base.replace(run_dir=str(tmp_path / "ind"), rows="independent", init_from=str(tmp_path / "causal" / "last"))
    res = train_encoder(texts_file / "train.jsonl", ind, EncoderConfig(), llm=tiny_llm, show_progress=False)
    enc = Encoder.from_pretrained(tmp_path / "ind" / "last", llm=tiny_llm)
    assert enc.layout.rows == "independent" and res["steps"] == 2
    with pytest.raises(NarError, match="rows"):
        TrainConfig(rows="diagonal")


def test_novel_tokens_put_unknown_words_into_autoencoding_texts(tiny_llm, texts_file, tmp_path):
    """novel_tokens: the pool holds only word-start tokens no training target holds; at rate 1 every text with
    a second word gets one of them in place of a word-start token, as source and target alike, the same for the
    same seed; rate 0 changes nothing; a run trains with it, and seq2seq pairs are refused."""
    from nar.data import train_val_splits
    from nar.train import novel_token_pool, with_novel_tokens

    cfg = TrainConfig(val_data=str(texts_file / "dev.jsonl"), max_tokens=16)
    train, _ = train_val_splits(texts_file / "train.jsonl", tiny_llm, cfg)
    pool = novel_token_pool(tiny_llm, train.token_ids)
    seen = {t for x in train.token_ids for t in x}
    assert pool and not seen & set(pool)
    assert all(tiny_llm.tokenizer.decode([i]).strip().isalpha() for i in pool)
    out = with_novel_tokens(train, 1.0, pool, tiny_llm, 16, seed=3)
    assert with_novel_tokens(train, 1.0, pool, tiny_llm, 16, seed=3).sources == out.sources
    assert with_novel_tokens(train, 0.0, pool, tiny_llm, 16, seed=3).sources == train.sources
    changed = 0
    for s0, s1, t1, ids in zip(train.sources, out.sources, out.targets, out.token_ids):
        assert s1 == t1 and ids == tiny_llm.encode(s1)
        if len(s0.split()) > 1 and s1 != s0:
            changed += 1
            assert set(ids) & set(pool)
    assert changed >= len(train) // 2
    run = TrainConfig(run_dir=str(tmp_path / "run"), steps=2, val_every=2, save_every=2, novel_tokens=0.5,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    assert train_encoder(texts_file / "train.jsonl", run, ENC, llm=tiny_llm, show_progress=False)["steps"] == 2
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a cat", "target": "the dog"}\n{"source": "a cow", "target": "the hen"}\n')
    with pytest.raises(NarError, match="autoencoding"):
        train_encoder(pairs, run.replace(val_data=None, source_column="source", target_column="target"), ENC,
                      llm=tiny_llm, show_progress=False)
