import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nar(*args, env=None):
    """The real console entry (python -m cli.main), so exit codes and stderr are the user's."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


def test_help_lists_commands_and_is_fast():
    t0 = time.perf_counter()
    p = _nar("--help")
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0 and "reconstruct" in p.stdout
    assert elapsed < 5  # the budget is 1 s on an idle machine; this guards against importing torch at start
    assert "import torch" not in open(os.path.join(ROOT, "cli", "main.py")).read().split("def ")[0]


def test_reconstruct_json_on_tiny_model(tiny_path, tmp_path):
    out = tmp_path / "p.safetensors"
    r = runner.invoke(app, ["reconstruct", "the cat sat on the mat", "--model", str(tiny_path), "--precision", "fp32",
                            "--lr", "0.05", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    for key in ("text", "decoded", "accuracy", "steps", "seconds", "n_tokens"):
        assert key in obj
    assert obj["decoded"] == obj["text"] == "the cat sat on the mat" and obj["accuracy"] == 1.0
    from nar.protos import ProtoSet

    assert ProtoSet.load(out).meta["texts"] == ["the cat sat on the mat"]


def test_reconstruct_file_table(tiny_path, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("the cat sat on the mat\n\nbirds sing in the morning\n")
    r = runner.invoke(app, ["reconstruct", "--file", str(f), "--model", str(tiny_path), "--precision", "fp32",
                            "--lr", "0.05"])
    assert r.exit_code == 0, r.output
    assert "2/2 texts reproduced exactly" in r.stdout
    r = runner.invoke(app, ["reconstruct", "--file", str(f), "--model", str(tiny_path), "--precision", "fp32",
                            "--lr", "0.05", "--json"])
    obj = json.loads(r.stdout)
    assert obj["count"] == 2 and len(obj["results"]) == 2


@pytest.mark.parametrize("args,msg", [
    (["   "], "empty text"),
    (["--file", "/definitely/not/here.txt"], "cannot read"),
    (["the cat " * 50, "--max-tokens", "64"], "over --max-tokens"),
    (["hello", "--model", "/no/such/model/dir"], "unknown model"),
    (["hello", "--model", "no-such-org/no-such-model"], "unknown model"),
    (["hello", "--precision", "fp8"], "precision"),
])
def test_bad_input_is_one_clear_line(tiny_path, args, msg):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_path)]
    p = _nar("reconstruct", *args)
    assert p.returncode != 0
    assert msg in p.stderr
    assert "Traceback" not in p.stderr
