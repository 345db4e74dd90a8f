"""Two CPU worker processes (torchrun -> accelerate PartialState, gloo) build one corpus."""

import json
import os
import socket
import subprocess
import sys

from nar import corpus

from .conftest import TINY_CORPUS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(args, nproc=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "cli.main"]
    if nproc:
        base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cli.main"]
    r = subprocess.run(base + ["build-corpus", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_two_processes_then_resume_with_other_world_size(tiny_path, tmp_path):
    texts = [f"{a} {b}" for a in TINY_CORPUS[:3] for b in TINY_CORPUS[3:7]]  # 12 distinct texts
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"k{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "c"
    common = ["--out", str(out), "--model", str(tiny_path), "--device", "cpu", "--precision", "fp32", "--lr", "0.05",
              "--slots", "2", "--json"]
    first = _build([str(src), *common, "--limit", "5"])  # one process, part of the input
    assert first["fitted"] == 5
    s = _build([str(src), *common], nproc=2)  # two processes, the whole input
    assert s["world_size"] == 2 and s["corpus_counts"]["rows"] == 12
    ids = corpus.load(out)["id"]
    assert sorted(ids) == sorted(f"k{i}" for i in range(12))
    assert corpus.info(out)["rows_on_disk"] == 12  # every id exactly once on disk, not only after de-duplication
    man = corpus.read_manifest(out)
    ranks = [(r["rank"], r["world_size"]) for r in man["runs"]]
    assert sorted(ranks) == [(0, 1), (0, 2), (1, 2)]
    assert sum(r["fitted"] for r in man["runs"]) == 12 and sum(r["already_done"] for r in man["runs"]) == 5
    assert set(man["counts"]["rows_per_rank"]) == {"0", "1"}
