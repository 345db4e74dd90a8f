"""Non-autoregressive generation: source -> encoder -> (e, m, N) -> ONE forward pass of the frozen LLM -> text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from nar.decode import decode_ids, generate_greedy, token_accuracy
from nar.encoder import Encoder
from nar.errors import NarError
from nar.llm import FrozenLLM
from nar.pairs import prompt_ids
from nar.refine import refine_ids


@torch.no_grad()
def encoder_outputs(enc: Encoder, llm: FrozenLLM, sources: list[str], layout, precision: str, stop_at_eos: bool,
                    batch_size: int = 32, backend: str = "torch") -> list[list[int]]:
    """One-pass token ids for each source: encoder -> (e, m, N) [+ the source, for an in-context encoder] -> one
    forward pass. The one path of `generate`, `nar.evaluate` and the benches."""
    with llm.autocast(precision):
        e, m, n = enc.predict(sources, batch_size)
    return decode_ids(llm, e, m, n, layout, precision=precision, stop_at_eos=stop_at_eos, backend=backend,
                      contexts=enc.context_ids(sources, llm))


def generate(enc: Encoder, llm: FrozenLLM, sources: list[str], *, precision: str = "auto", batch_size: int = 32,
             compare_ar: bool = False, chat: bool = True, max_new_tokens: int | None = None,
             backend: str = "torch", refine: int = 0) -> list[dict]:
    """One dict per source: source, output, n_tokens, seconds (encoder + one pass [+ refinement], per source in
    its batch); with refine = K > 0, K Jacobi passes of the frozen LLM over [chat prompt, draft] follow the one
    pass (`nar.refine`: they move the output towards the LLM's own greedy reply, reached after at most N passes;
    meaningful for encoders trained on the LLM's replies, e.g. `make story-data`);
    with compare_ar also ar_output (the greedy AR reply, max_new_tokens long or as long as ours), ar_seconds and
    agreement (token accuracy of ours against the AR output).
    `backend`: the runtime of the one pass (`nar.backends`)."""
    enc.check_llm(llm)
    layout, stop = enc.layout, bool(enc.meta.get("stop_at_eos"))
    out = []
    for lo in range(0, len(sources), batch_size):
        chunk = sources[lo:lo + batch_size]
        t0 = time.perf_counter()
        ids = encoder_outputs(enc, llm, chunk, layout, precision, stop, batch_size, backend)
        if refine > 0:
            ids = refine_ids(llm, [prompt_ids(llm, s, chat) for s in chunk], ids, refine, precision=precision,
                             batch_size=batch_size)
        dt = (time.perf_counter() - t0) / len(chunk)
        for s, x in zip(chunk, ids):
            out.append({"source": s, "output": llm.tokenizer.decode(x, skip_special_tokens=True), "n_tokens": len(x),
                        "seconds": round(dt, 4), "_ids": x})
    if compare_ar:  # the AR reply at the length of ours (or max_new_tokens): the same question, asked N times
        for row in out:
            t0 = time.perf_counter()
            with torch.no_grad():
                ar = generate_greedy(llm, [prompt_ids(llm, row["source"], chat)],
                                     max_new_tokens or max(len(row["_ids"]), 1))[0]
            row["ar_seconds"] = round(time.perf_counter() - t0, 4)
            row["ar_output"] = llm.tokenizer.decode(ar, skip_special_tokens=True).strip()
            row["agreement"] = round(token_accuracy(row["_ids"], ar), 4) if ar else 0.0
    for row in out:
        row.pop("_ids")
    return out


def read_sources(path: str | Path) -> list[str]:
    """Sources from a file: one per line, or .jsonl with a 'source' (or 'prompt' / 'text') field."""
    path = Path(path)
    try:
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise NarError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    if not path.name.endswith(".jsonl"):
        return lines
    out = []
    for k, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NarError(f"{path}:{k}: not a JSON object ({exc.msg})") from exc
        col = next((c for c in ("source", "prompt", "text") if isinstance(obj, dict) and c in obj), None)
        if col is None:
            raise NarError(f"{path}:{k}: no 'source', 'prompt' or 'text' field")
        out.append(obj[col])
    return out


def heldout_sources(enc: Encoder, llm: FrozenLLM, k: int) -> list[str]:
    """The first k held-out sources recorded with the checkpoint (its val data, or its val split)."""
    from nar.data import checkpoint_splits

    return checkpoint_splits(enc.meta, llm)[1].sources[:k]
