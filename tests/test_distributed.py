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


def _train(args, nproc=None, fault=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if fault:
        env["NAR_FAULT"] = fault
    base = [sys.executable, "-m", "cli.main"]
    if nproc:
        base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cli.main"]
    r = subprocess.run(base + ["train-encoder", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


def test_train_encoder_distributed_equals_one_process_and_resumes(tiny_path, tmp_path):
    """2 processes x 8 texts reach the weights of 1 process x 16 (same global batch, gradients summed over
    processes); a 2-process run killed after a step resumes from last/ to the weights of an uninterrupted one."""
    import torch

    data = tmp_path / "train.txt"
    data.write_text("".join(f"{a} {b}\n" for a in TINY_CORPUS for b in TINY_CORPUS[:4]))
    val = tmp_path / "val.txt"
    val.write_text("".join(t + "\n" for t in TINY_CORPUS[:3]))
    common = [str(data), "--val-data", str(val), "--model", str(tiny_path), "--device", "cpu", "--precision", "fp32",
              "--batch-size", "16", "--dropout", "0", "--d-model", "32", "--max-tokens", "12", "--lr", "3e-3",
              "--val-every", "100", "--save-every", "2", "--json"]
    _train([*common, "--steps", "4", "--run-dir", str(tmp_path / "one")])
    two = _train([*common, "--steps", "4", "--run-dir", str(tmp_path / "two")], nproc=2)
    assert json.loads(two.stdout.strip().splitlines()[-1])["world_size"] == 2
    _train([*common, "--steps", "4", "--grad-accum", "2", "--run-dir", str(tmp_path / "accum")])
    one, two, accum = (_weights(tmp_path / k) for k in ("one", "two", "accum"))
    assert set(one) == set(two)
    for k in one:  # the same sums in another order: float32 rounding only
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(accum[k], one[k], rtol=1e-4, atol=1e-5)
    # killed at its 3rd step (after the step-2 checkpoint), then resumed: the uninterrupted run's weights exactly
    dead = _train([*common, "--steps", "4", "--run-dir", str(tmp_path / "killed")], nproc=2,
                  fault="train.step@3", check=False)
    assert dead.returncode != 0
    step = json.loads((tmp_path / "killed" / "last" / "config.json").read_text())["train_state"]["step"]
    assert step == 2
    mid = _weights(tmp_path / "killed")
    assert any(not torch.allclose(mid[k], one[k]) for k in one)  # steps 3-4 still move the weights
    _train([*common, "--steps", "4", "--run-dir", str(tmp_path / "killed"), "--resume"], nproc=2)
    resumed = _weights(tmp_path / "killed")
    for k in one:
        assert torch.equal(resumed[k], two[k]), k
