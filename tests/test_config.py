"""Configs: validation, documentation, and the CLI options derived from them (no default drift)."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from nar import config as C
from nar.errors import NarError

STAGES = [C.FitConfig, C.BuildConfig, C.EncoderConfig, C.TrainConfig, C.IndexConfig, C.StabilityConfig,
          C.AttentionConfig, C.SemanticsConfig, C.CapacityConfig, C.ConnectivityConfig]


@pytest.mark.parametrize("cls", STAGES)
def test_every_field_is_documented(cls):
    docs = C.field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []


@pytest.mark.parametrize("cls,bad", [
    (C.FitConfig, dict(max_steps=0)), (C.FitConfig, dict(target_acc=0)), (C.FitConfig, dict(lr=-1)),
    (C.FitConfig, dict(beta2=1.0)), (C.FitConfig, dict(init="zeros")), (C.FitConfig, dict(lr_schedule="linear")),
    (C.FitConfig, dict(first="x")), (C.FitConfig, dict(precision="fp8")), (C.FitConfig, dict(num_slots=0)),
    (C.BuildConfig, dict(input="x", out="y", on_long="drop")), (C.BuildConfig, dict(input="x", out="y", rd_target="q")),
    (C.BuildConfig, dict(input="x", out="y", warm_start="encoder")),
    (C.BuildConfig, dict(input="x", out="y", text_column="a", source_column="b", target_column="c")),
    (C.BuildConfig, dict(input="x", out="y", source_column="b")), (C.BuildConfig, dict(input="x", out="y", rank=1)),
    (C.EncoderConfig, dict(d_model=0)), (C.EncoderConfig, dict(dropout=1.0)), (C.EncoderConfig, dict(layers=-1)),
    (C.EncoderConfig, dict(unk_below=-1)), (C.EncoderConfig, dict(context="prompt")),
    (C.TrainConfig, dict(grad_accum=0)), (C.TrainConfig, dict(w_reg=-1)), (C.TrainConfig, dict(weights=(1.0, 0.0))),
    (C.TrainConfig, dict(novel_tokens=2.0)), (C.IndexConfig, dict(kind="lsh")),
    (C.StabilityConfig, dict(alphas=(-1.0,))), (C.SemanticsConfig, dict()), (C.CapacityConfig, dict(threshold=2)),
    (C.ConnectivityConfig, dict(grid=1)),
])
def test_bad_values_are_refused(cls, bad):
    with pytest.raises(NarError):
        cls(**bad)


def test_dict_round_trip_ignores_unknown_keys():
    cfg = C.BuildConfig(input="in.jsonl", out="c", rd_weight=0.5)
    assert C.BuildConfig.from_dict({**cfg.to_dict(), "from_the_future": 1}) == cfg
    assert C.CapacityConfig.from_dict(C.CapacityConfig(ns=(4, 8)).to_dict()).ns == (4, 8)


def test_build_corpus_cli_defaults_are_the_library_defaults(monkeypatch, tmp_path):
    """`nar build-corpus IN --out C` and `build_corpus(BuildConfig(IN, C))` fit the same corpus."""
    import nar.build

    real, seen = nar.build.build_corpus, {}
    monkeypatch.setattr(nar.build, "build_corpus", lambda bcfg, fcfg, **kw: seen.update(b=bcfg, f=fcfg) or {})
    r = CliRunner().invoke(app, ["build-corpus", "in.jsonl", "--out", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    assert seen["f"] == C.CORPUS_FIT and seen["f"] != C.FitConfig()
    assert seen["b"] == C.BuildConfig(input="in.jsonl", out=str(tmp_path / "c"))
    assert inspect.signature(real).parameters["fcfg"].default == C.CORPUS_FIT


def test_options_follow_the_config(monkeypatch):
    """Renamed options, comma lists and --flag/--no-flag reach the config; a bad value is one clear error."""
    import nar.reconstruct

    seen = {}

    def fake(texts, cfg, **kw):
        seen["cfg"] = cfg
        raise NarError("stop here")

    monkeypatch.setattr(nar.reconstruct, "reconstruct", fake)
    r = CliRunner().invoke(app, ["reconstruct", "a text", "--slots", "3", "--sort-length", "--lr", "0.5",
                                 "--append-eos"])
    assert isinstance(r.exception, NarError)
    assert seen["cfg"] == C.FitConfig(num_slots=3, sort_by_length=True, lr=0.5, append_eos=True)
    r = CliRunner().invoke(app, ["reconstruct", "a text", "--precision", "fp8"])
    assert isinstance(r.exception, NarError) and "precision" in str(r.exception)
    import nar.analysis.capacity

    def fake_capacity(out, cfg, on_result, **kw):
        seen.update(cap=cfg)
        on_result({"mode": "shared", "text": 2, "n": 64, "accuracy": 0.9912, "steps": 812, "seconds": 1500.0})

    monkeypatch.setattr(nar.analysis.capacity, "run_capacity", fake_capacity)
    monkeypatch.setattr("nar.llm.load_llm", lambda *a, **k: None)
    r = CliRunner().invoke(app, ["analyze", "capacity", "--ns", "4,8", "--max-steps", "9"])
    assert seen["cap"] == C.CapacityConfig(ns=(4, 8), max_steps=9)
    assert "shared m, text 2, N = 64: token accuracy 0.991 after 812 steps, 25.0 min" in r.output  # each fit, as done


def test_encoder_configs_of_removed_levers_are_refused_with_the_tag():
    """A saved config that used a lever removed from the core (or an attention-head config, which lacks 'head') is
    refused, naming the git tag where it runs; one that left them off loads, its off values ignored."""
    new = C.EncoderConfig(d_model=64, unk_below=3)
    off = {**new.to_dict(), "head": "sum", "ctc_slots": 0, "m_readout": "repeat", "n_e": 1, "lora_rank": 0}
    assert C.EncoderConfig.from_dict(off) == new
    for used in ({"ctc_slots": 2}, {"n_e": 4}, {"head": "attention"}, {"unk_mode": "shape"}):
        with pytest.raises(NarError, match="encoder-study-2026-12"):
            C.EncoderConfig.from_dict({**off, **used})
    with pytest.raises(NarError, match="head='attention'"):
        C.EncoderConfig.from_dict(new.to_dict())  # no 'head' field: written before the sum head existed


RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(recipe):
    """A misspelt key or a bad value in a recipe is refused at load, not hours into a run."""
    train, _ = C.load_recipe(recipe)
    assert train.data, f"{recipe.name} names no training data"
    assert not train.weights or len(train.weights) == len(train.data)
