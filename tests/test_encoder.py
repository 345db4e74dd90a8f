import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from nar.build import build_corpus
from nar.config import BuildConfig, EncoderConfig, FitConfig, TrainConfig
from nar.encoder import Encoder
from nar.errors import NarError
from nar.evaluate import eval_encoder, score
from nar.generate import generate

from .conftest import TINY_CORPUS, build_tiny_llm, record_calls, run_training

FIT = dict(precision="fp32", lr=5e-2, max_steps=300, num_slots=8)
ENC = EncoderConfig(d_model=64, layers=1, dropout=0.0, max_len=16)
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
    res = run_training(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    assert res["train_texts"] == 10 and res["val_texts"] == 3
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(torch.equal(before[k], v) for k, v in tiny_llm.model.state_dict().items())
    for f in ("model.safetensors", "config.json", "optimizer.pt"):
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
    whole = run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), **kw), enc,
                          llm=tiny_llm, show_progress=False)["encoder"]
    real, calls = train_mod.losses, {"n": 0}

    def dies_at_21(*a, **k):
        calls["n"] += 1
        if calls["n"] == 21:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "losses", dies_at_21)
    with pytest.raises(KeyboardInterrupt):
        run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), **kw), enc, llm=tiny_llm,
                      show_progress=False)
    monkeypatch.setattr(train_mod, "losses", real)
    state = json.loads((tmp_path / "b" / "last" / "config.json").read_text())["train_state"]
    assert state["step"] == 20
    resumed = run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), resume=True, **kw),
                            enc, llm=tiny_llm, show_progress=False)["encoder"]
    a, b = whole.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed with a larger --steps trains only the new steps (a warm restart of the schedule)
    steps_run = record_calls(monkeypatch, train_mod, "losses")
    longer = run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "b"), resume=True,
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
    enc = EncoderConfig(**{**ENC.to_dict(), "layers": 2})
    first = run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "a"), steps=6, **kw), enc,
                          llm=tiny_llm, show_progress=False)["encoder"]
    real, steps, at_start = train_mod.train_step, [], {}

    def spy(enc_, *a, **k):
        if not steps:
            at_start.update({k: v.clone() for k, v in enc_.state_tensors().items()})  # views of live weights
        steps.append(1)
        return real(enc_, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", spy)
    again = run_training(texts_file / "train.jsonl",
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
    with pytest.raises(NarError, match="layers=3"):
        run_training(texts_file / "train.jsonl",
                      TrainConfig(run_dir=str(tmp_path / "c"), steps=1, init_from=str(tmp_path / "a"), **kw),
                      EncoderConfig(**{**ENC.to_dict(), "layers": 3}), llm=tiny_llm, show_progress=False)


def test_sum_head_is_a_sum_of_per_token_parts():
    """head 'sum': the pooled vectors of a text are the sum of what each token (at its position) contributes
    alone, so what a token adds never depends on the rest of the text (the compositional lever)."""
    from nar.encoder import SumHead

    cfg = EncoderConfig(d_model=16, max_len=8, dropout=0.0)
    head = SumHead(12, 24, cfg).eval()
    states = torch.randn(1, 5, 12)
    mask = torch.tensor([[True, True, True, True, False]])
    whole = head.pool(states, mask)
    parts = sum(head.pool(states, torch.arange(5)[None] == i) for i in range(4))
    assert torch.allclose(whole, parts, atol=1e-5)
    assert not torch.allclose(whole, head.pool(states.roll(1, dims=1), mask.roll(1, dims=1)), atol=1e-3)  # order counts


def test_generate_compares_with_the_ar_reply_at_the_same_length(tiny_llm, texts_file, tmp_path):
    from nar.decode import generate_greedy, token_accuracy

    ecfg = EncoderConfig(**{**ENC.to_dict(), "context": "source"})
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=3, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    enc = run_training(texts_file / "train.jsonl", cfg, ecfg, llm=tiny_llm, show_progress=False)["encoder"]
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
    run_training(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
    ev = eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, teacher=teacher, precision="fp32")
    methods = {(r["split"], r["method"]) for r in ev["rows"]}
    assert methods == {(s, m) for s in ("held-out", "train")
                       for m in ("encoder", "nearest neighbour", "position mode")}
    held = [r for r in ev["rows"] if r["split"] == "held-out"]
    assert all(r["texts"] == 3 for r in held)
    enc = next(r for r in held if r["method"] == "encoder")
    assert sum(b["texts"] for b in enc["by_length"]) == 3
    assert all(0 <= a <= 1 for a in enc["by_position"]) and len(enc["by_position"]) >= 1
    # baselines over other text (a checkpoint whose training text is not at hand): no training split then
    other = eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, teacher=teacher, precision="fp32",
                         data=str(texts_file / "dev.jsonl"), baseline_data=[str(texts_file / "train.jsonl")])
    assert {r["split"] for r in other["rows"]} == {"held-out"} and other["baseline_text"] == [
        str(texts_file / "train.jsonl")]
    # evaluating on the training file is refused: held out means unseen
    with pytest.raises(NarError, match="training texts"):
        eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, teacher=teacher, data=str(texts_file / "train.jsonl"))


def test_corpus_regression_can_overfit_a_handful(tiny_llm, pair_corpus, tmp_path):
    """From a corpus folder the fitted proto-tokens add a regression target; a handful is learned."""
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=250, val_every=1000, save_every=1000,
                      w_reg=0.1, **{**RUN, "max_tokens": 32})
    res = run_training(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    ev = eval_encoder(tmp_path / "run" / "last", llm=tiny_llm, precision="fp32")
    enc_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "encoder")
    mode_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "position mode")
    assert res["train_texts"] == 12
    assert enc_train["token_acc"] >= 0.8 and enc_train["token_acc"] > mode_train["token_acc"]


def test_fingerprint_mismatch_and_bad_sources(tiny_llm, texts_file, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=2, val_every=1000, save_every=1000,
                      val_data=str(texts_file / "dev.jsonl"), **RUN)
    res = run_training(texts_file / "train.jsonl", cfg, ENC, llm=tiny_llm, show_progress=False)
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
        run_training(texts_file / "train.jsonl", TrainConfig(**{**cfg.to_dict(), "resume": True}), ENC, llm=tiny_llm,
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
    # a recipe file: its [train] and [encoder] fields, overridden only by options given on the command line
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[train]\ndata = ["{texts_file / "train.jsonl"}"]\nval_data = "{texts_file / "dev.jsonl"}"\n'
                      f'steps = 2\nlr = 0.002\nprecision = "fp32"\n[encoder]\nd_model = 48\nlayers = 1\n')
    r = CliRunner().invoke(app, ["train-encoder", "--config", str(recipe), "--run-dir", str(tmp_path / "r"),
                                 "--model", str(tiny_path), "--steps", "3", "--json"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "r" / "last" / "config.json").read_text())
    assert saved["train_config"]["steps"] == 3 and saved["train_config"]["lr"] == 0.002
    assert saved["encoder_config"]["d_model"] == 48
    recipe.write_text("[train]\nsteps = 2\nbogus = 1\n")
    r = CliRunner().invoke(app, ["train-encoder", "--config", str(recipe), "--model", str(tiny_path)])
    assert r.exit_code == 1 and "bogus" in str(r.exception)


def test_make_data_writes_stsb_by_genre_and_one_training_union_without_dev(tmp_path):
    """make_data: STS-B train/dev sentences (dev: unseen in train, with its genre), each text file capped, and
    encoder-train.jsonl: every training text once; no training file holds a dev sentence (case and punctuation
    ignored)."""
    import gzip

    from nar.data import make_data

    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (tmp_path / "train.tsv").write_text(head + "0\tmain-news\tf\ty\t1\ts\ts\tA cat sits.\tA dog runs.\t1.0\n"
                                               "1\tmain-captions\tf\ty\t2\ts\ts\tA cat sits.\tBirds \"sing\".\t2.0\n"
                                               "2\tmain-captions\tf\ty\t3\ts\ts\tRain falls!\tA cat sits.\t0.5\n")
    (tmp_path / "dev.tsv").write_text(head + "0\tmain-forums\tf\ty\t1\ts\ts\tA dog runs.\tRain falls.\t1.0\n")
    with gzip.open(tmp_path / "news.txt.gz", "wt") as f:
        f.write("rain falls\nA storm hits.\nA cat sits.\nMarkets rise.\nOne too many.\n")
    res = make_data(tmp_path / "out", stsb=tmp_path, texts={"news": tmp_path / "news.txt.gz"}, per_source=4)
    # "Rain falls!" (train) and "rain falls" (news) are the dev sentence "Rain falls." up to case and punctuation
    assert res["stsb-train"] == 3 and res["stsb-dev"] == 1 and res["news"] == 4

    def read(name):
        return [json.loads(x) for x in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]

    assert read("stsb-dev") == [{"text": "Rain falls.", "genre": "forums"}]
    assert {r["genre"] for r in read("stsb-train")} == {"news", "captions"}
    union = [r["text"] for r in read("encoder-train")]
    assert [r["text"] for r in read("news")] == ["A storm hits.", "A cat sits.", "Markets rise.", "One too many."]
    assert union == ["A cat sits.", "A dog runs.", 'Birds "sing".', "A storm hits.", "Markets rise.", "One too many."]


def test_warm_start_from_encoder(tiny_llm, teacher, pair_corpus, tmp_path, monkeypatch):
    """build-corpus --warm-start encoder: every new text starts at the encoder's prediction for its source."""
    import nar.build as build
    from nar.build import encoder_init

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=5, val_every=1000, save_every=1000,
                      **{**RUN, "max_tokens": 32})
    trained = run_training(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)["encoder"]
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


def test_unk_below_reads_rare_source_tokens_as_one_learned_vector(tiny_llm, texts_file, tmp_path):
    """unk_below K: tokens seen fewer than K times in the training sources are read as the head's one unknown
    vector: two sources that differ only in such tokens get the same proto-tokens, sources that differ in a known
    token do not; the known set is this run's and survives a reload.    """
    tok = tiny_llm.tokenizer
    lines = [json.loads(x)["text"] for x in (texts_file / "train.jsonl").read_text().splitlines()]
    counts: dict[int, int] = {}
    for t in lines:
        for i in tok(t, add_special_tokens=False).input_ids:
            counts[i] = counts.get(i, 0) + 1
    kw = dict(val_every=4, save_every=4, val_data=str(texts_file / "dev.jsonl"), **RUN)
    cfg = EncoderConfig(**{**ENC.to_dict(), "unk_below": 2})
    res = run_training(texts_file / "train.jsonl", TrainConfig(run_dir=str(tmp_path / "run"), steps=4, **kw), cfg,
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


def test_novel_tokens_put_unknown_words_into_autoencoding_texts(tiny_llm, texts_file, tmp_path):
    """novel_tokens: the pool holds only word-start tokens no training target holds; at rate 1 every text with
    a second word gets one of them in place of a word-start token, as source and target alike, the same for the
    same seed; rate 0 changes nothing; a run trains with it, and seq2seq pairs are refused."""
    from nar.data import load_pairs
    from nar.train import novel_token_pool, with_novel_tokens

    train = load_pairs(texts_file / "train.jsonl", tiny_llm, TrainConfig(max_tokens=16))
    counts = torch.bincount(torch.tensor([t for x in train.token_ids for t in x]), minlength=len(tiny_llm.tokenizer))
    pool = novel_token_pool(tiny_llm, counts, train.token_ids[0][0])
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
    assert run_training(texts_file / "train.jsonl", run, ENC, llm=tiny_llm, show_progress=False)["steps"] == 2
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a cat", "target": "the dog"}\n{"source": "a cow", "target": "the hen"}\n')
    with pytest.raises(NarError, match="autoencoding"):
        run_training(pairs, run.replace(val_data=None, source_column="source", target_column="target"), ENC,
                      llm=tiny_llm, show_progress=False)
