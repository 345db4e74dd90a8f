import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from nar import corpus
from nar.build import build_corpus
from nar.config import BuildConfig, FitConfig
from nar.decode import decode_ids
from nar.errors import NarError
from nar.llm import Layout
from nar.losses import MemoryBank, anchor_loss, relational_loss, teacher_projection

from .conftest import TINY_CORPUS, build_tiny_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIT = dict(precision="fp32", lr=5e-2, max_steps=300, num_slots=4)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_relational_loss_zero_iff_similarities_agree():
    torch.manual_seed(0)
    T = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    Q = teacher_projection(16, 40)
    P = (T @ Q) * 3.7  # an isometry plus a scale keeps every cosine
    assert relational_loss(P, T).item() == pytest.approx(0.0, abs=1e-10)
    bank_T = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    assert relational_loss(P, T, bank_T @ Q, bank_T).item() == pytest.approx(0.0, abs=1e-10)
    assert relational_loss(torch.randn(6, 40), T).item() > 1e-3
    assert relational_loss(P, T, torch.randn(5, 40), bank_T).item() > 1e-3
    assert anchor_loss(P, T, Q).item() == pytest.approx(0.0, abs=1e-6)
    assert anchor_loss(torch.randn(6, 40), T, Q).item() > 0.5


def test_relational_loss_has_gradient_and_bank_is_bounded():
    P = torch.randn(4, 8, requires_grad=True)
    relational_loss(P, torch.randn(4, 5)).backward()
    assert P.grad.abs().sum() > 0
    bank = MemoryBank(3)
    for _ in range(5):
        bank.add(torch.randn(8), torch.randn(5))
    bp, bt = bank.tensors()
    assert bp.shape == (3, 8) and bt.shape == (3, 5)


def test_shards_roundtrip_exact_and_dedupe(tmp_path):
    w = corpus.ShardWriter(tmp_path, dim=4, teacher_dim=3)
    rows = [{"id": f"x{i}", "source": "s", "target": "t", "token_ids": [1, 2], "n_tokens": 2,
             "e": torch.randn(4).tolist(), "m": torch.randn(4).tolist(), "accuracy": 1.0, "steps": 3,
             "loss": 0.1, "seconds": 0.5, "converged": True, "failed": False, "teacher": [0.1, 0.2, 0.3],
             "rank": 0} for i in range(5)]
    for r in rows:
        w.write([r])
    w.write([rows[0]])  # a duplicate, as an interrupted compaction could leave
    (tmp_path / "manifest.json").write_text("{}")
    assert corpus.read_table(tmp_path).num_rows == 5
    assert w.compact(shard_size=2) == 6
    ds = corpus.load(tmp_path)
    assert sorted(ds["id"]) == [f"x{i}" for i in range(5)]
    by_id = {r["id"]: r for r in ds}
    for r in rows:
        assert torch.equal(by_id[r["id"]]["e"], torch.tensor(r["e"], dtype=torch.float32))


def test_build_end_to_end_and_resume(tiny_llm, teacher, tmp_path):
    texts = TINY_CORPUS[:6]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]
                      + [{"id": "blank", "text": "   "}, {"id": "long", "text": "the cat " * 30}])
    out = tmp_path / "corpus"
    bcfg = BuildConfig(input=str(src), out=str(out), rd_weight=1.0, rd_bank=4)
    fcfg = FitConfig(**FIT, max_tokens=16)
    s = build_corpus(bcfg, fcfg, llm=tiny_llm, teacher=teacher, show_progress=False)
    assert s["fitted"] == 6 and s["skipped_empty"] == 1 and s["skipped_long"] == 1
    assert s["converged"] >= 5
    ds = corpus.load(out)
    assert sorted(ds["id"]) == [f"t{i}" for i in range(6)]
    man = corpus.read_manifest(out)
    assert man["llm"]["fingerprint"] == tiny_llm.fingerprint and man["counts"]["rows"] == 6
    # stored vectors decode to their stored tokens (one pass, same layout)
    rows = [r for r in ds if r["accuracy"] == 1.0]
    pred = decode_ids(tiny_llm, torch.stack([r["e"] for r in rows]), torch.stack([r["m"] for r in rows]),
                      [int(r["n_tokens"]) for r in rows], Layout.from_dict(man["layout"]))
    assert pred == [r["token_ids"].tolist() for r in rows]
    assert torch.allclose(ds[0]["teacher"], teacher.encode([ds[0]["target"]])[0], atol=1e-5)
    # rerun: nothing refitted, nothing duplicated
    s2 = build_corpus(bcfg, fcfg, llm=tiny_llm, teacher=teacher, show_progress=False)
    assert s2["fitted"] == 0 and s2["already_done"] == 6
    assert corpus.info(out)["count"] == 6
    # truncate policy counts and keeps the long row
    s3 = build_corpus(BuildConfig(input=str(src), out=str(out), on_long="truncate"), fcfg, llm=tiny_llm,
                      teacher=teacher, show_progress=False)
    assert s3["truncated"] == 1 and s3["fitted"] == 1
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_fingerprint_mismatch_refused(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TINY_CORPUS[:2]])
    out = tmp_path / "c"
    build_corpus(BuildConfig(input=str(src), out=str(out)), FitConfig(**FIT), llm=tiny_llm, teacher=teacher,
                 show_progress=False)
    from nar.llm import load_llm

    other = load_llm(str(build_tiny_llm(tmp_path / "other", seed=1)), device="cpu")
    with pytest.raises(NarError, match="was built with LLM"):
        build_corpus(BuildConfig(input=str(src), out=str(out)), FitConfig(**FIT), llm=other, teacher=teacher,
                     show_progress=False)
    from nar.teacher import Teacher

    other_teacher = Teacher(teacher.model, name="other", fingerprint="other@0000")
    with pytest.raises(NarError, match="was built with teacher"):
        build_corpus(BuildConfig(input=str(src), out=str(out)), FitConfig(**FIT), llm=tiny_llm,
                     teacher=other_teacher, show_progress=False)
    with pytest.raises(NarError, match="layout"):
        build_corpus(BuildConfig(input=str(src), out=str(out)), FitConfig(**FIT, prefix="none"), llm=tiny_llm,
                     teacher=teacher, show_progress=False)


def test_bad_inputs(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "the cat sat"}])
    with pytest.raises(NarError, match="no column 'text'"):
        build_corpus(BuildConfig(input=str(src), out=str(tmp_path / "c")), FitConfig(**FIT), llm=tiny_llm,
                     teacher=teacher, show_progress=False)
    with pytest.raises(NarError, match="no such file"):
        build_corpus(BuildConfig(input=str(tmp_path / "nope.jsonl"), out=str(tmp_path / "c")), FitConfig(**FIT),
                     llm=tiny_llm, teacher=teacher, show_progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(NarError, match="not empty"):
        build_corpus(BuildConfig(input=str(src), out=str(tmp_path / "junk"), text_column="sentence"),
                     FitConfig(**FIT), llm=tiny_llm, teacher=teacher, show_progress=False)


def test_pairs_and_text_inputs(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"q": "the cat", "a": "sat on the mat"},
                                             {"q": "birds", "a": "sing in the morning"}])
    out = tmp_path / "c"
    s = build_corpus(BuildConfig(input=str(src), out=str(out), source_column="q", target_column="a"),
                     FitConfig(**FIT, append_eos=True), llm=tiny_llm, teacher=teacher, show_progress=False)
    assert s["fitted"] == 2
    ds = corpus.load(out)
    assert set(ds["source"]) == {"the cat", "birds"} and ds[0]["token_ids"][-1].item() == tiny_llm.eos_id
    txt = tmp_path / "t.txt"
    txt.write_text("the cat sat\n\nbirds sing\n")
    s = build_corpus(BuildConfig(input=str(txt), out=str(tmp_path / "c2")), FitConfig(**FIT), llm=tiny_llm,
                     teacher=teacher, show_progress=False)
    assert s["fitted"] == 2


def test_corpus_info_and_make_pairs_cli(tiny_path, tmp_path):
    runner = CliRunner()
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TINY_CORPUS[:3]])
    out = tmp_path / "c"
    r = runner.invoke(app, ["build-corpus", str(src), "--out", str(out), "--model", str(tiny_path), "--precision",
                            "fp32", "--lr", "0.05", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fitted"] == 3
    r = runner.invoke(app, ["corpus-info", str(out), "--json"])
    d = json.loads(r.stdout)
    for k in ("count", "converged", "unique_ids", "llm_fingerprint"):
        assert k in d
    assert d["count"] == d["unique_ids"] == d["rows_on_disk"] == 3
    # a shard written twice (an interrupted compaction) is counted on disk, not in the corpus
    import shutil

    import pyarrow.parquet as pq

    shard = corpus.shard_files(out)[0]
    shutil.copy(shard, shard.with_name("r000-copy-000000.parquet"))
    d = json.loads(runner.invoke(app, ["corpus-info", str(out), "--json"]).stdout)
    assert d["rows_on_disk"] == 3 + pq.ParquetFile(shard).metadata.num_rows
    assert d["count"] == d["unique_ids"] == 3
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "the cat"}, {"prompt": "birds"}])
    r = runner.invoke(app, ["make-pairs", str(prompts), "--out", str(tmp_path / "pairs.jsonl"), "--model",
                            str(tiny_path), "--max-new-tokens", "5", "--json"])
    assert r.exit_code == 0, r.output
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["source"] for p in pairs] == ["the cat", "birds"] and all(p["n_tokens"] <= 5 for p in pairs)
    r = runner.invoke(app, ["make-pairs", str(prompts), "--out", str(tmp_path / "p2.jsonl"), "--model", str(tiny_path),
                            "--max-new-tokens", "3", "--template", "say: {}", "--limit", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["source"] for x in (tmp_path / "p2.jsonl").read_text().splitlines()] == ["say: the cat"]


def test_sigkill_mid_run_then_resume_loses_nothing_and_duplicates_nothing(tiny_path, tmp_path):
    texts = [f"{a} {b}" for a in TINY_CORPUS[:4] for b in TINY_CORPUS[6:9]]  # 12 distinct texts
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "cli.main", "build-corpus", str(src), "--out", str(out), "--model", str(tiny_path),
           "--precision", "fp32", "--lr", "0.05", "--slots", "2", "--max-steps", "150", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(corpus.shard_files(out) if out.exists() else []) < 3:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed: " + p.stderr.read().decode()[-500:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = corpus.read_table(out).num_rows
    assert 3 <= before < len(texts)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["already_done"] == before and s["fitted"] == len(texts) - before
    ids = corpus.load(out)["id"]
    assert sorted(ids) == sorted(f"k{i}" for i in range(len(texts)))


def test_warm_start_from_nearest_neighbour(tiny_llm, teacher, tmp_path, caplog):
    from nar.frame import neighbour_init

    src = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(TINY_CORPUS[:4])])
    out = tmp_path / "c"
    cfg = BuildConfig(input=str(src), out=str(out), warm_start="neighbour")
    with caplog.at_level("WARNING"):
        build_corpus(cfg, FitConfig(**FIT), llm=tiny_llm, teacher=teacher, show_progress=False)
    assert "no rows yet" in caplog.text
    ds = corpus.load(out)
    rows = {r["id"]: r for r in ds}
    # a query equal to a written text starts at that text's own vectors
    E, M = neighbour_init(out, teacher.encode([TINY_CORPUS[2], TINY_CORPUS[0]]))
    torch.testing.assert_close(E[0], rows["a2"]["e"])
    torch.testing.assert_close(M[1], rows["a0"]["m"])
    assert neighbour_init(tmp_path / "empty-does-not-matter", torch.zeros(0, teacher.dim)) is None
    more = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": TINY_CORPUS[4 + i]} for i in range(2)])
    run = build_corpus(BuildConfig(input=str(more), out=str(out), warm_start="neighbour"), FitConfig(**FIT),
                       llm=tiny_llm, teacher=teacher, show_progress=False)
    assert run["fitted"] == 2 and corpus.info(out)["count"] == 6


def test_text_failing_at_its_first_step_is_stored_as_failed(tiny_llm, teacher, tmp_path, monkeypatch):
    """A text whose loss is NaN at its very first step has no best vectors: it is written with failed=True
    and NaN vectors of the corpus's width (not a 0-length e in the fixed-size column), is not refitted on
    resume, and is left out of the index, the bank and the analyses."""
    import math

    from .conftest import nan_at_first_step

    nan_at_first_step(monkeypatch, slot=0)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(TINY_CORPUS[:3])])
    out = tmp_path / "c"
    cfg, fcfg = BuildConfig(input=str(src), out=str(out), rd_bank=4), FitConfig(**{**FIT, "max_steps": 20})
    s = build_corpus(cfg, fcfg, llm=tiny_llm, teacher=teacher, show_progress=False)
    assert s["fitted"] == 3 and s["failed"] == 1
    rows = {r["id"]: r for r in corpus.load(out)}
    bad = rows["t0"]
    assert bad["failed"] and bad["steps"] == 0 and bad["e"].shape == (tiny_llm.hidden_size,)
    assert all(math.isnan(x) for x in bad["e"].tolist())
    assert build_corpus(cfg, fcfg, llm=tiny_llm, teacher=teacher, show_progress=False)["fitted"] == 0
    from nar.index import corpus_vectors

    assert "t0" not in corpus_vectors(out, "e")[0] and corpus.info(out)["failed"] == 1


def test_frame_pin_holds_e_in_the_teacher_subspace(tiny_llm):
    """A pinned fit keeps e's teacher-subspace component at scale * t Q for the whole fit and still converges;
    so e's cosines between texts follow the teacher's as far as the fitted complement is small."""
    from nar.fit import FitItem, fit_stream
    from nar.losses import FramePin, frame_pin

    texts = TINY_CORPUS[:4]
    D = tiny_llm.hidden_size
    Q = teacher_projection(16, D)
    T = torch.nn.functional.normalize(torch.randn(len(texts), 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    pin = FramePin(Q, scale=2 * tiny_llm.embed_norm)
    items = [FitItem(key=str(i), ids=tiny_llm.encode(t), payload={"teacher": T[i]}) for i, t in enumerate(texts)]
    res = {r.key: r for r in fit_stream(tiny_llm, items, FitConfig(**FIT), pin_e=pin)}
    E = torch.stack([res[str(i)].e for i in range(len(texts))])
    assert all(r.converged for r in res.values())
    assert torch.allclose(E @ Q.T, pin.scale * T, atol=1e-4)  # the pinned part never moved
    free = E - (E @ Q.T) @ Q
    assert free.norm(dim=1).min() > 1e-3  # ... while the rest of e was fitted
    with pytest.raises(NarError, match="narrower than the LLM"):
        FramePin(teacher_projection(D + 8, D), 1.0)
    sk = frame_pin(16, D, scale=3.0, dims=4)  # only a 4-dim sketch of the teacher vector is pinned
    E2 = sk(torch.randn(len(texts), D), items)
    assert sk.Q.shape == (4, D) and torch.allclose(E2 @ sk.Q.T, (sk.target(T) @ sk.Q.T), atol=1e-4)
    assert torch.allclose(sk.target(T).norm(dim=1), torch.full((len(texts),), 3.0), atol=1e-4)


def test_build_frame_pin_on_a_narrow_llm(tiny_llm, teacher, tmp_path):
    """Pinning all 384 teacher coordinates of a 64-wide LLM is refused; the default sketch takes at most half of e
    (here 32 coordinates) and the build's e carries it exactly."""
    from nar.losses import frame_pin

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(TINY_CORPUS[:3])])
    with pytest.raises(NarError, match="narrower than the LLM"):
        build_corpus(BuildConfig(input=str(src), out=str(tmp_path / "c"), frame_dims=0), FitConfig(**FIT),
                     llm=tiny_llm, teacher=teacher, show_progress=False)
    bcfg = BuildConfig(input=str(src), out=str(tmp_path / "d"))
    build_corpus(bcfg, FitConfig(**FIT, init="teacher"), llm=tiny_llm, teacher=teacher, show_progress=False)
    pin = frame_pin(teacher.dim, tiny_llm.hidden_size, bcfg.frame_pin * tiny_llm.embed_norm, bcfg.frame_dims)
    cols = corpus.columns(tmp_path / "d", ["e", "teacher"])
    E, T = torch.from_numpy(cols["e"]), torch.from_numpy(cols["teacher"])
    assert pin.Q.shape[0] == tiny_llm.hidden_size // 2
    assert torch.allclose(E @ pin.Q.T, pin.target(T) @ pin.Q.T, atol=1e-4)
