import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from nar.build import build_corpus
from nar.config import (
    AttentionConfig,
    BuildConfig,
    CapacityConfig,
    ConnectivityConfig,
    FitConfig,
    SemanticsConfig,
    StabilityConfig,
)
from nar.errors import NarError
from nar.index import build_index, load_index
from nar.search import neighbors, recall_at_k

from .conftest import TINY_CORPUS, record_calls

FIT = dict(precision="fp32", lr=5e-2, max_steps=300, num_slots=4)


@pytest.fixture(scope="module")
def tiny_corpus(tiny_llm, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    src = d / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TINY_CORPUS)))
    out = d / "c"
    build_corpus(BuildConfig(input=str(src), out=str(out)), FitConfig(**FIT), llm=tiny_llm, teacher=teacher,
                 show_progress=False)
    return out


def test_recall_at_k_hand_made():
    assert recall_at_k([["a", "b", "c"]], [["a", "c", "d"]], 3) == pytest.approx(2 / 3)
    assert recall_at_k([["a", "b"], ["x", "y"]], [["b", "a"], ["z", "w"]], 2) == pytest.approx(0.5)


@pytest.mark.parametrize("space,kind", [("e", "flat"), ("m", "hnsw"), ("em", "flat")])
def test_index_nearest_is_itself(tiny_corpus, space, kind):
    from nar.index import corpus_vectors

    idx = build_index(tiny_corpus, space, kind)
    ids, x, _ = corpus_vectors(tiny_corpus, space)
    scores, found = idx.search(x, 1)
    assert [f[0] for f in found] == ids
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    assert load_index(tiny_corpus, space, kind).meta["count"] == len(ids)


def test_neighbors_by_id_and_text(tiny_llm, teacher, tiny_corpus):
    res = neighbors(tiny_corpus, id="t0", k=3)
    assert len(res["rows"]) == 3 and all(r["id"] != "t0" for r in res["rows"])
    assert res["rows"][0]["score"] >= res["rows"][-1]["score"]
    assert 0.0 <= res["recall_at_k"] <= 1.0
    same = neighbors(tiny_corpus, text=TINY_CORPUS[0], k=3)  # present: looked up, not fitted
    assert not same["fitted"] and same["rows"] == res["rows"]
    new = neighbors(tiny_corpus, text="the cat sat in the park", k=3, llm=tiny_llm, teacher=teacher)
    assert new["fitted"] and len(new["rows"]) == 3


def test_bad_index_inputs(tiny_corpus, tmp_path):
    with pytest.raises(NarError, match="too large"):
        neighbors(tiny_corpus, id="t0", k=100)
    with pytest.raises(NarError, match="not in corpus"):
        neighbors(tiny_corpus, id="nope", k=2)
    with pytest.raises(NarError, match="not a nar corpus"):
        build_index(tmp_path, "e")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(NarError, match="empty"):
        build_index(tmp_path, "e")
    # an index from another state of the corpus is refused
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(tiny_corpus, other)
    build_index(other, "e", "flat")
    meta = json.loads((other / "index" / "e-flat.json").read_text())
    meta["corpus_fingerprint"] = "0@stale"
    (other / "index" / "e-flat.json").write_text(json.dumps(meta))
    with pytest.raises(NarError, match="rebuild"):
        load_index(other, "e", "flat")


def test_neighbors_and_index_cli(tiny_corpus):
    runner = CliRunner()
    r = runner.invoke(app, ["index", "build", str(tiny_corpus), "--space", "e", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["neighbors", str(tiny_corpus), "--id", "t1", "-k", "4", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 4 and {"id", "text", "score"} <= set(rows[0])
    r = runner.invoke(app, ["index", "projector", str(tiny_corpus)])
    assert r.exit_code == 0, r.output
    assert list((tiny_corpus / "projector" / "e").rglob("projector_config.pbtxt"))


def test_stability_analysis(tiny_llm, tiny_corpus, tmp_path):
    from nar.analysis.stability import run_stability

    cfg = StabilityConfig(sample=4, alphas=(0.0, 0.5, 3.0), repeats=1)
    res = run_stability(tiny_corpus, tmp_path, cfg, llm=tiny_llm)
    rows = res["rows"]
    assert {"noise", "target", "alpha", "token_acc", "exact", "self_nn"} <= set(rows[0])
    clean = [r for r in rows if r["alpha"] == 0.0]
    assert all(r["token_acc"] == 1.0 for r in clean)  # converged rows, no noise
    assert all(r["self_nn"] == 1.0 for r in clean if r["target"] != "m")
    loud = [r for r in rows if r["alpha"] == 3.0 and r["target"] == "both"]
    assert all(r["token_acc"] < 1.0 for r in loud)
    for f in ("stability.json", "stability.csv", "stability.png"):
        assert (tmp_path / f).is_file()


def test_attention_analysis(tiny_llm, tiny_corpus, tmp_path):
    from nar.analysis.attention import run_attention

    before = tiny_llm.model.config._attn_implementation
    res = run_attention(tiny_corpus, tmp_path, AttentionConfig(sample=3), llm=tiny_llm)
    assert res["layers"] == 2 and res["heads"] == 4
    assert np.array(res["heatmap_e"]).shape == (2, 4)
    assert 0 < res["mean_to_e"] < 1 and res["mean_to_prefix"] is not None
    assert (tmp_path / "attention.png").is_file() and (tmp_path / "attention.json").is_file()
    assert tiny_llm.model.config._attn_implementation == before  # the eager switch is undone


def test_semantics_analysis(tiny_llm, teacher, tmp_path):
    from nar.analysis.semantics import run_semantics

    tsv = tmp_path / "sts.tsv"
    pairs = [("the cat sat on the mat", "a cat sat on the mat", 4.8), ("the dog ran", "birds sing", 0.2),
             ("the sun is warm", "the sun is warm today", 4.5), ("we read books", "cold water", 0.1),
             ("rain falls", "rain falls on hills", 3.9), ("she plays piano", "the river runs", 0.5)]
    tsv.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    aug = tmp_path / "aug.jsonl"
    aug.write_text(json.dumps({"id": "x1", "original": "the cat sat on the mat",
                               "lexical": "on the mat the cat sat", "semantic": "the dog ran in the park"}) + "\n")
    cfg = SemanticsConfig(stsb=str(tsv), pairs=6, max_steps=20, augment=str(aug), precision="fp32")
    res = run_semantics(tmp_path / "out", cfg, llm=tiny_llm, teacher=teacher, show_progress=False)
    assert [r["key"] for r in res["rows"]] == ["none", "default"]
    for r in res["rows"]:
        assert {"sts_e", "sts_m", "sts_em", "sts_teacher", "agree_e", "mean_acc"} <= set(r)
        assert -1 <= r["sts_e"] <= 1
    assert set(res["augmentation"]) == {"plain", "default"}
    assert all(set(a) == {"e", "m", "em", "teacher"} for a in res["augmentation"].values())
    assert (tmp_path / "out" / "semantics.png").is_file()
    assert all((tmp_path / "out" / f"augmentation-{k}.png").is_file() for k in ("plain", "default"))


def test_capacity_and_connectivity(tiny_llm, tmp_path, monkeypatch):
    import nar.analysis.capacity as cap
    import nar.fit
    from nar.analysis.capacity import run_capacity
    from nar.analysis.connectivity import run_connectivity

    cfg = FitConfig(**FIT)
    texts = ["the cat sat on the mat and the dog ran in the park", "a bird sang on the roof of the old red barn"]
    fitted = []
    passes = [record_calls(monkeypatch, m, "reconstruction_loss") for m in (nar.fit, cap)]
    res = run_capacity(tmp_path / "cap", CapacityConfig(ns=(2, 4, 8), m="both"), llm=tiny_llm, fit=cfg,
                       texts=texts, on_result=fitted.append)
    assert [(r["mode"], r["n"]) for r in res["rows"] if r["text"] == 0] == [
        ("per-text", 2), ("per-text", 4), ("per-text", 8), ("shared", 2), ("shared", 4), ("shared", 8)]
    assert res["largest_n_per_text"][0] >= 2 and set(res["largest_n_per_text_shared"]) == {0, 1}
    assert len(fitted) == 12 and res["resumed_rows"] == 0
    assert (tmp_path / "cap" / "capacity.png").is_file()
    again = run_capacity(tmp_path / "cap", CapacityConfig(ns=(2, 4, 8), m="both"), llm=tiny_llm, fit=cfg,
                         texts=texts, on_result=fitted.append)  # resumed: nothing is fitted twice
    assert len(fitted) == 12 and again["resumed_rows"] == 12 and again["rows"] == res["rows"]
    whole = [len(p) for p in passes]
    # killed in each mode right after its first in-flight snapshot: the re-runs go on from it, same rows
    from nar.analysis.report import RowLog

    class Killed(Exception):
        pass

    save = RowLog.save_state
    for tag in ("per-text", "shared"):
        def save_then_die(self, t, state, tag=tag):
            save(self, t, state)
            if t == tag:
                raise Killed
        monkeypatch.setattr(RowLog, "save_state", save_then_die)
        with pytest.raises(Killed):
            run_capacity(tmp_path / "cap2", CapacityConfig(ns=(2, 4, 8), m="both"), llm=tiny_llm, fit=cfg,
                         texts=texts, snapshot_every=3)
        assert (tmp_path / "cap2" / f"capacity-inflight-{tag}.pt").is_file()
    monkeypatch.setattr(RowLog, "save_state", save)
    cut = run_capacity(tmp_path / "cap2", CapacityConfig(ns=(2, 4, 8), m="both"), llm=tiny_llm, fit=cfg,
                       texts=texts, snapshot_every=3)

    def same(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert 0 < cut["resumed_rows"] < 12 and same(cut["rows"]) == same(res["rows"])
    assert not list((tmp_path / "cap2").glob("capacity-inflight-*.pt"))  # finished: no stale state left behind
    # killed just after a snapshot, so the three runs together made exactly the passes of the one run, no more
    assert [len(p) - w for p, w in zip(passes, whole)] == whole
    con, two = ConnectivityConfig(curve_steps=30, grid=5), ["the cat sat on the mat", "a dog ran in the park"]
    import nar.analysis.connectivity as conn

    fit_calls = record_calls(monkeypatch, conn, "fit_stream")
    res = run_connectivity(tmp_path / "con", con, llm=tiny_llm, fit=cfg, texts=two)
    r = res["rows"][0]
    assert r["acc_a"] == 1.0 and r["acc_b"] == 1.0 and res["resumed_rows"] == 0
    assert {"line_min_acc", "curve_min_acc", "cos_e_ab"} <= set(r)
    assert (tmp_path / "con" / "connectivity.png").is_file()
    assert len(fit_calls) == 2 and [x["index"] for x in res["rows"]] == [0, 1]
    # each finished text is on disk at once; a re-run of the same job fits nothing again (a killed one: only the rest)
    again = run_connectivity(tmp_path / "con", con, llm=tiny_llm, fit=cfg, texts=two)
    other = run_connectivity(tmp_path / "con", con, llm=tiny_llm, fit=cfg, texts=two[:1])
    assert other["resumed_rows"] == 0 and len(fit_calls) == 3  # other settings: the old rows are not mixed in
    assert again["resumed_rows"] == 2 and again["rows"] == res["rows"]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_saved_index_returns_the_same_hits(tiny_corpus, kind):
    from nar.index import corpus_vectors

    built = build_index(tiny_corpus, "em", kind)
    _, x, _ = corpus_vectors(tiny_corpus, "em")
    s1, f1 = built.search(x, 3)
    loaded = load_index(tiny_corpus, "em", kind, build_missing=False)
    s2, f2 = loaded.search(x, 3)
    assert f1 == f2 and np.array_equal(s1, s2) and loaded.meta["count"] == len(x)
    assert not list((tiny_corpus / "index").glob(".tmp-*"))  # both halves written atomically


def test_pipeline_neighbors_is_the_library_call(tiny_llm, tiny_corpus):
    from nar.pipeline import Pipeline

    assert Pipeline(tiny_llm).neighbors(tiny_corpus, id="t0", k=3) == neighbors(tiny_corpus, id="t0", k=3)
