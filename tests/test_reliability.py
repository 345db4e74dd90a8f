"""The fault and bad-input matrix (docs/RELIABILITY.md): each row a test.

Crashes are real: a child process runs the library with NAR_FAULT=<point>@<n> (nar.faults) and dies by SIGKILL at
that point, no cleanup; then the state on disk is checked and the same job is run again to completion.
"""

import errno
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from nar import corpus
from nar.artifacts import folder_lock
from nar.build import build_corpus
from nar.config import BuildConfig, EncoderConfig, FitConfig, PairsConfig, TrainConfig
from nar.encoder import Encoder
from nar.errors import NarError

from .conftest import TINY_CORPUS, run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIT = dict(precision="fp32", lr=5e-2, max_steps=60, num_slots=2)
TEXTS = [f"{a} {b}" for a in TINY_CORPUS[:4] for b in TINY_CORPUS[4:7]]  # 12 distinct texts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def killed_at(point: str, code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a child Python with NAR_FAULT=point; it must die by SIGKILL there."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "NAR_FAULT": point, **env})
    assert r.returncode == -9, f"expected SIGKILL at {point}, got {r.returncode}: {r.stderr[-1500:]}"
    return r


def build_code(src, out) -> str:
    return (f"from nar.build import build_corpus; from nar.config import BuildConfig, FitConfig; "
            f"from nar.llm import load_llm; "
            f"build_corpus(BuildConfig(input={str(src)!r}, out={str(out)!r}, rd_weight=0.0), FitConfig(**{FIT!r}), "
            f"llm=load_llm({str(TINY)!r}, device='cpu'), show_progress=False)")


TINY = None  # the tiny model's folder, set by the fixture below (the child processes load it by path)


@pytest.fixture(autouse=True)
def _tiny(tiny_path):
    global TINY
    TINY = tiny_path


def _build(src, out, llm, teacher, **kw):
    return build_corpus(BuildConfig(input=str(src), out=str(out), rd_weight=0.0, **kw), FitConfig(**FIT), llm=llm,
                        teacher=teacher, show_progress=False)


# ---------------------------------------------------------------- crashes


def test_kill_during_fitting_loses_only_unfinished_texts(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(TEXTS)])
    out = tmp_path / "c"
    killed_at("fit.written@3", build_code(src, out))
    assert sorted(corpus.load(out)["id"]) == sorted(corpus.done_ids(out)) and len(corpus.done_ids(out)) == 3
    run = _build(src, out, tiny_llm, teacher)
    assert run["already_done"] == 3 and run["fitted"] == 9
    ids = corpus.load(out)["id"]
    assert sorted(ids) == sorted(f"k{i}" for i in range(12))  # every id exactly once


def test_kill_during_compaction_duplicates_nothing(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(TEXTS)])
    out = tmp_path / "c"
    killed_at("compact.merged", build_code(src, out))
    on_disk = sum(corpus.pq.ParquetFile(f).metadata.num_rows for f in corpus.shard_files(out))
    assert on_disk == 24  # merged shard written, small shards still there: every row twice on disk ...
    assert sorted(corpus.load(out)["id"]) == sorted(f"k{i}" for i in range(12))  # ... and once for readers
    run = _build(src, out, tiny_llm, teacher)
    assert run["already_done"] == 12 and run["fitted"] == 0
    assert sum(corpus.pq.ParquetFile(f).metadata.num_rows for f in corpus.shard_files(out)) == 12


@pytest.fixture(scope="module")
def small_corpus(tiny_llm, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    src = write_jsonl(d / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(TEXTS[:6])])
    _build(src, d / "c", tiny_llm, teacher)
    return d / "c"


def test_kill_during_index_build_then_the_index_is_rebuilt(small_corpus, tmp_path):
    import shutil

    from nar.index import build_index, load_index

    c = tmp_path / "c"
    shutil.copytree(small_corpus, c)
    killed_at("index.faiss", f"from nar.index import build_index; build_index({str(c)!r}, 'em', 'flat')")
    assert (c / "index" / "em-flat.faiss").is_file() and not (c / "index" / "em-flat.json").is_file()
    fresh = build_index(small_corpus, "em", "flat")
    got = load_index(c, "em", "flat")  # notices the missing half and rebuilds
    assert got.ids == fresh.ids and got.index.ntotal == 6
    # the two halves from different builds (a crash after the FAISS file of a later build): detected by hash
    other = tmp_path / "other"
    shutil.copytree(small_corpus, other)
    build_index(other, "e", "flat")
    shutil.copy(other / "index" / "e-flat.faiss", c / "index" / "em-flat.faiss")
    with pytest.raises(NarError, match="half-written"):
        load_index(c, "em", "flat", build_missing=False)
    assert load_index(c, "em", "flat").index.d == fresh.index.d


TRAIN = dict(batch_size=4, lr=3e-3, warmup=2, precision="fp32", max_tokens=16, steps=12, val_every=1000,
             save_every=4)
ENC = EncoderConfig(d_model=32, layers=1, dropout=0.0, max_len=16)


def _train_code(data, run) -> str:
    return (f"import torch; torch.set_num_threads(1); from nar.train import train_encoder; "
            f"from nar.config import TrainConfig, EncoderConfig; from nar.llm import load_llm; "
            f"train_encoder(TrainConfig(data=({str(data)!r},), run_dir={str(run)!r}, "
            f"**{TRAIN!r}), EncoderConfig(**{ENC.to_dict()!r}), llm=load_llm({str(TINY)!r}, device='cpu'), "
            f"show_progress=False)")


def _train_here(data, run, llm, resume=False) -> None:
    """The same training as `_train_code`, in this process (one thread, as in the child): only a run that must
    die needs a process of its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(data, TrainConfig(run_dir=str(run), resume=resume, **TRAIN), ENC, llm=llm,
                      show_progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unkilled_training(tmp_path_factory, tiny_llm):
    """The training data and a run of it never killed (shared by both kill points)."""
    d = tmp_path_factory.mktemp("unkilled")
    data = write_jsonl(d / "t.jsonl", [{"text": t} for t in TEXTS])
    _train_here(data, d / "whole", tiny_llm)
    return data, d / "whole"


@pytest.mark.parametrize("point", ["checkpoint.files@3", "checkpoint.swap@3"])
def test_kill_during_checkpoint_save_then_resume_is_bit_for_bit(tmp_path, point, unkilled_training, tiny_llm):
    """Saves: best/ at step 0 (1st), last/ at steps 4 (2nd) and 8 (3rd). Killed inside the 3rd: last/ is the step-4
    checkpoint (files written, not swapped in) or the step-8 one (swap cut short, finished by recovery); either way
    the resumed run ends with exactly the weights of a run never killed."""
    data, whole = unkilled_training
    run = tmp_path / "run"
    killed_at(point, _train_code(data, run))
    _train_here(data, run, tiny_llm, resume=True)
    from safetensors.torch import load_file

    a, b = load_file(str(whole / "last" / "model.safetensors")), load_file(str(run / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.endswith((".partial", ".old")) for p in run.iterdir())


def test_kill_during_make_pairs_keeps_finished_batches(tiny_llm, tmp_path):
    from nar.pairs import make_pairs

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(TINY_CORPUS[:6]) + "\n")
    cfg = PairsConfig(max_new_tokens=4, batch_size=2, chat=False)
    code = (f"from nar.pairs import make_pairs; from nar.config import PairsConfig; "
            f"make_pairs({str(prompts)!r}, {str(tmp_path / 'out.jsonl')!r}, PairsConfig(**{cfg.to_dict()!r}), "
            f"model={str(TINY)!r}, device='cpu', show_progress=False)")
    killed_at("pairs.batch@2", code)
    assert not (tmp_path / "out.jsonl").exists()
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 1 + 4  # header + two batches
    res = make_pairs(prompts, tmp_path / "out.jsonl", cfg, model=tiny_llm, show_progress=False)
    assert res["resumed"] == 4 and res["pairs"] == 6 and not (tmp_path / "out.jsonl.partial").exists()
    whole = make_pairs(prompts, tmp_path / "whole.jsonl", cfg, model=tiny_llm, show_progress=False)
    assert whole["resumed"] == 0
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()


# ---------------------------------------------------------------- concurrent writers, full disk


def test_second_build_on_the_same_folder_is_refused(tiny_llm, teacher, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(TEXTS[:4])])
    out = tmp_path / "c"
    with folder_lock(out, "build-r000", "build-corpus"):  # what a running build holds
        with pytest.raises(NarError, match=r"in use by pid \d+"):
            _build(src, out, tiny_llm, teacher)
    assert not list(out.glob("shards/*.parquet"))  # nothing was fitted
    run = _build(src, out, tiny_llm, teacher)  # the lock died with its holder
    assert run["fitted"] == 4 and sorted(corpus.load(out)["id"]) == [f"k{i}" for i in range(4)]


def test_disk_full_leaves_the_corpus_readable_and_the_rerun_completes(tiny_llm, teacher, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "text": t} for i, t in enumerate(TEXTS[:8])])
    out = tmp_path / "c"
    real, calls = corpus.pq.write_table, {"n": 0}

    def fills_up(table, where, *a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            with open(where, "wb") as f:  # a partial temp file, as a real full disk leaves
                f.write(b"PAR1")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *a, **k)

    monkeypatch.setattr(corpus.pq, "write_table", fills_up)
    with pytest.raises(NarError, match="disk full while writing .*parquet"):
        _build(src, out, tiny_llm, teacher)
    monkeypatch.setattr(corpus.pq, "write_table", real)
    assert len(corpus.load(out)) == 3 and not list((out / "shards").glob(".tmp-*"))
    run = _build(src, out, tiny_llm, teacher)
    assert run["already_done"] == 3 and sorted(corpus.load(out)["id"]) == [f"k{i}" for i in range(8)]


# ---------------------------------------------------------------- bad inputs and artifacts


def _nar(*args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


BAD_INPUTS = {
    "empty": (b"", "is empty: there are no rows"),
    "number": (b'{"text": 5}\n{"text": 6}\n', r"row 1: column 'text' holds int 5, not text"),
    "no_column": (b'{"txt": "hello"}\n', r"has no column 'text'; its columns are \['txt'\]"),
    "latin1": ('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"), r"in.jsonl:2:14: byte 0xe9 is not UTF-8"),
}


def _check_one_line_error(code, stdout, stderr, case, out):
    assert code == 1
    assert json.loads(stdout)["error"]  # --json: the error as JSON on stdout ...
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1  # ... and one line on stderr
    assert re.search(BAD_INPUTS[case][1], " ".join(stderr.split())), stderr
    assert not (out / "shards").exists()  # nothing written


def _bad_input_args(tmp_path, case):
    (tmp_path / "in.jsonl").write_bytes(BAD_INPUTS[case][0])
    return ["build-corpus", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "c"), "--model", str(TINY), "--json"]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_1(tmp_path, case, monkeypatch, capsys):
    """The console entry point in this process (the same code path as the installed `nar`, without paying a fresh
    interpreter's imports per case); the test below runs one case as a real `nar` process."""
    from cli.main import main

    monkeypatch.setattr(sys, "argv", ["nar", *_bad_input_args(tmp_path, case)])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    _check_one_line_error(exit_.value.code, captured.out, captured.err, case, tmp_path / "c")


def test_bad_input_in_a_real_process_is_one_line_and_exit_1(tmp_path):
    r = _nar(*_bad_input_args(tmp_path, "latin1"))
    _check_one_line_error(r.returncode, r.stdout, r.stderr, "latin1", tmp_path / "c")


def test_rows_without_the_column_are_counted_and_warned(tiny_llm, teacher, tmp_path, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": TINY_CORPUS[0]}, {"id": "b", "txt": "typo"},
                                              {"id": "c", "text": None}, {"id": "d", "text": "  "}])
    with caplog.at_level("WARNING"):
        run = _build(src, tmp_path / "c", tiny_llm, teacher)
    assert (run["fitted"], run["skipped_missing"], run["skipped_empty"]) == (1, 2, 1)
    assert "2 of 4 rows have no 'text' value" in caplog.text


def test_non_finite_proto_tokens_are_refused(tmp_path):
    from nar.llm import Layout
    from nar.protos import ProtoSet

    e = torch.randn(3, 8)
    ProtoSet(e, torch.randn(3, 8), [2, 2, 2], [[1, 2]] * 3, Layout()).save(tmp_path / "ok.safetensors")
    assert len(ProtoSet.load(tmp_path / "ok.safetensors").e) == 3
    e[1, 4] = float("inf")
    ProtoSet(e, torch.randn(3, 8), [2, 2, 2], [[1, 2]] * 3, Layout()).save(tmp_path / "bad.safetensors")
    with pytest.raises(NarError, match=r"1 proto-token row\(s\) hold NaN or inf \(first: row 1\)"):
        ProtoSet.load(tmp_path / "bad.safetensors")
    failed = ProtoSet(e, torch.randn(3, 8), [2, 2, 2], [[1, 2]] * 3, Layout(),
                      {"results": [{"failed": False}, {"failed": True}, {"failed": False}]})
    failed.save(tmp_path / "failed.safetensors")
    assert len(ProtoSet.load(tmp_path / "failed.safetensors").e) == 3  # a failed fit may hold NaN: it says so


def test_artifacts_of_another_format_or_incomplete_are_refused(small_corpus, tiny_llm, tmp_path):
    import shutil

    c = tmp_path / "c"
    shutil.copytree(small_corpus, c)
    man = json.loads((c / "manifest.json").read_text())
    (c / "manifest.json").write_text(json.dumps({**man, "format": "nar-corpus/99"}))
    with pytest.raises(NarError, match="format 'nar-corpus/99'; this nar .* reads 'nar-corpus/1'"):
        corpus.read_manifest(c)
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS[:6]])

    run_training(data, TrainConfig(run_dir=str(tmp_path / "run"), **{**TRAIN, "steps": 2}), ENC,
                  llm=tiny_llm, show_progress=False)
    ck = tmp_path / "run" / "last"
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["format"] == "nar-encoder/1"
    (ck / "config.json").write_text(json.dumps({**cfg, "format": "nar-encoder/7"}))
    with pytest.raises(NarError, match="format 'nar-encoder/7'"):
        Encoder.from_pretrained(ck, llm=tiny_llm)
    (ck / "config.json").write_text(json.dumps(cfg))
    whole = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(whole[: len(whole) // 2])  # a copy cut short: one line, not a traceback
    with pytest.raises(NarError, match="truncated or damaged"):
        Encoder.from_pretrained(ck, llm=tiny_llm)
    (ck / "model.safetensors").write_bytes(whole[:5])
    with pytest.raises(NarError, match="truncated or damaged"):
        Encoder.from_pretrained(ck, llm=tiny_llm)
    (ck / "model.safetensors").unlink()
    with pytest.raises(NarError, match="incomplete encoder checkpoint"):
        Encoder.from_pretrained(ck, llm=tiny_llm)
    with pytest.raises(NarError, match="cannot resume .* missing model.safetensors"):
        run_training(data, TrainConfig(run_dir=str(tmp_path / "run"), resume=True,
                                        **{**TRAIN, "steps": 4}), ENC, llm=tiny_llm, show_progress=False)
