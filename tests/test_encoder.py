import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from nar.build import build_corpus
from nar.config import BuildConfig, EncoderConfig, FitConfig, TrainConfig
from nar.encoder import Encoder
from nar.errors import NarError
from nar.generate import generate
from nar.train import eval_encoder, train_encoder

from .conftest import TINY_CORPUS, build_tiny_llm

FIT = dict(precision="fp32", lr=5e-2, max_steps=300, num_slots=8)
ENC = EncoderConfig(d_model=64, layers=1, heads=4, dropout=0.0, max_len=16)


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


def test_encoder_trains_reloads_and_generates(tiny_llm, pair_corpus, tmp_path):
    before = {k: v.clone() for k, v in tiny_llm.model.state_dict().items()}
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=40, batch_size=8, lr=3e-3, warmup=5, val_every=20,
                      precision="fp32", val_frac=0.2)
    losses = []
    import nar.monitor as mon

    orig = mon.TensorBoardWriter.scalar

    def spy(self, tag, value, step):
        if tag == "encoder/loss_total":
            losses.append(value)
        orig(self, tag, value, step)

    saved = {}
    orig_save = Encoder.save_pretrained

    def keep(self, path, extra=None):  # the encoder as trained, in memory, at each save
        saved[str(path)] = self
        orig_save(self, path, extra)

    mon.TensorBoardWriter.scalar = spy
    Encoder.save_pretrained = keep
    try:
        res = train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
        assert res["val_texts"] >= 1
    finally:
        mon.TensorBoardWriter.scalar = orig
        Encoder.save_pretrained = orig_save
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(torch.equal(before[k], v) for k, v in tiny_llm.model.state_dict().items())
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "last" / "optimizer.pt").is_file()
    # reload -> the predictions of the encoder as trained
    a = Encoder.from_pretrained(tmp_path / "run" / "last")
    b = saved[str(tmp_path / "run" / "last")]
    src = ["say: the cat sat on the mat", "say: birds sing in the morning"]
    ea, ma, na = a.predict(src)
    eb, mb, nb = b.predict(src)
    assert torch.equal(ea, eb) and torch.equal(ma, mb) and na == nb
    rows = generate(a, tiny_llm, src, precision="fp32", compare_ar=True, chat=False)
    assert [r["source"] for r in rows] == src and all(isinstance(r["output"], str) for r in rows)
    assert all({"seconds", "ar_output", "ar_seconds", "agreement"} <= set(r) for r in rows)
    ev = eval_encoder(tmp_path / "run", pair_corpus, llm=tiny_llm, precision="fp32")
    methods = {(r["split"], r["method"]) for r in ev["rows"]}
    assert ("val", "encoder") in methods and ("val", "nearest neighbour") in methods
    assert ("train", "mean proto-token") in methods
    # resume continues from the last step: only steps 40..49 run
    import nar.train

    steps_run = []
    real_losses = nar.train.losses
    cfg2 = TrainConfig(**{**cfg.to_dict(), "steps": 50, "resume": True})
    nar.train.losses = lambda *a, **k: steps_run.append(1) or real_losses(*a, **k)
    try:
        train_encoder(pair_corpus, cfg2, ENC, llm=tiny_llm, show_progress=False)
    finally:
        nar.train.losses = real_losses
    assert len(steps_run) == 10
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["train_state"]["step"] == 50


def test_encoder_can_overfit_a_handful(tiny_llm, pair_corpus, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=250, batch_size=8, lr=3e-3, warmup=10, val_every=1000,
                      precision="fp32", val_frac=0.1, w_reg=0.1)
    train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    ev = eval_encoder(tmp_path / "run" / "last", pair_corpus, llm=tiny_llm, precision="fp32")
    enc_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "encoder")
    mean_train = next(r for r in ev["rows"] if r["split"] == "train" and r["method"] == "mean proto-token")
    assert enc_train["token_acc"] >= 0.8 and enc_train["token_acc"] > mean_train["token_acc"]


def test_fingerprint_mismatch_and_bad_sources(tiny_llm, pair_corpus, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=2, batch_size=4, val_every=1000, precision="fp32")
    train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    enc = Encoder.from_pretrained(tmp_path / "run")
    from nar.llm import load_llm

    other = load_llm(str(build_tiny_llm(tmp_path / "other", seed=3)), device="cpu")
    with pytest.raises(NarError, match="trained for LLM"):
        generate(enc, other, ["say: hi"])
    with pytest.raises(NarError, match="empty source"):
        generate(enc, tiny_llm, ["  "])


def test_generate_cli_json(tiny_path, tiny_llm, pair_corpus, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=2, batch_size=4, val_every=1000, precision="fp32")
    train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    src = tmp_path / "src.txt"
    src.write_text("say: the cat\nsay: birds sing\n")
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "run"), "--input", str(src), "--model", str(tiny_path),
                                 "--precision", "fp32", "--json", "--output", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0, r.output
    objs = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [o["source"] for o in objs] == ["say: the cat", "say: birds sing"]
    assert all({"source", "output", "seconds"} <= set(o) for o in objs)
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def test_warm_start_from_encoder(tiny_llm, teacher, pair_corpus, tmp_path, monkeypatch):
    """build-corpus --warm-start encoder: every new text starts at the encoder's prediction for its source."""
    import nar.build as build
    from nar.build import encoder_init

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=5, batch_size=4, val_every=1000, precision="fp32")
    train_encoder(pair_corpus, cfg, ENC, llm=tiny_llm, show_progress=False)
    rows = [{"id": f"n{i}", "source": f"repeat: {t}", "target": t} for i, t in enumerate(["a new text", "another"])]
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    e_ref, m_ref, _ = Encoder.from_pretrained(tmp_path / "run").predict([r["source"] for r in rows])
    seen = {}
    real = build.fit_stream

    def spy(llm, items, fcfg, **kw):
        seen.update({it.key: (it.init_e.clone(), it.init_m.clone()) for it in items})
        return real(llm, items, fcfg, **kw)

    monkeypatch.setattr(build, "fit_stream", spy)
    bcfg = BuildConfig(input=str(src), out=str(tmp_path / "c"), source_column="source", target_column="target",
                       rd_weight=0.0, warm_start="encoder", warm_start_encoder=str(tmp_path / "run"))
    run = build_corpus(bcfg, FitConfig(**{**FIT, "max_steps": 20}, append_eos=True), llm=tiny_llm, teacher=teacher,
                       show_progress=False)
    assert run["fitted"] == 2
    for i, r in enumerate(rows):
        torch.testing.assert_close(seen[r["id"]][0], e_ref[i])
        torch.testing.assert_close(seen[r["id"]][1], m_ref[i])
    # the encoder must predict for the layout being fitted, and the option needs its path
    with pytest.raises(NarError, match="layout"):
        encoder_init(tmp_path / "run", tiny_llm, FitConfig(**FIT, prefix="none"), ["x"])
    with pytest.raises(NarError, match="warm-start-encoder"):
        BuildConfig(input=str(src), out=str(tmp_path / "d"), warm_start="encoder")
