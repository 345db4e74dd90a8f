"""Runtimes for the one forward pass: the frozen LLM read from ready `inputs_embeds` (B, T, D).

Every backend answers the same question: given input embeddings, which token is the argmax at each of the
last n positions. The layout (prefix, e, m, ...) is built elsewhere (`nar.llm`), so a backend does not
depend on it.

    torch       the Hugging Face model in this process (fp32 weights; `precision="bf16"` autocasts)
    llama.cpp   the embedded GGUF file itself (Q4_1 weights, Q8_0 embedding / output head), through
                llama-cpp-python, the embeddings passed in one batch (one sequence per text). Optional:
                `pip install "nar[fast]"` (builds llama.cpp from source).

`get_backend("auto", llm)` takes the first of AUTO_ORDER that can run this model, and otherwise torch; today
that is torch (see AUTO_ORDER for why llama.cpp, though faster, is not in it).
What each backend costs and how often its argmax agrees with torch fp32 is measured by
`bench/generate_speed.py` (docs/BENCHMARKS.md, "Honest speed").
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
from pathlib import Path

import torch

from nar.errors import NarError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "llama.cpp")
AUTO_ORDER = ("torch",)
"""`auto` tries these in order and falls back to torch. Only runtimes that reproduce the torch fp32 argmax on
fitted proto-tokens belong here. llama.cpp does not: on 8 texts fitted exactly in fp32 it decoded 2 exactly
(token agreement 0.885; torch bf16 autocast: 4 of 8, 0.969), because a fitted solution sits close to decision
boundaries and Q4_1 x Q8 arithmetic moves them (docs/BENCHMARKS.md, "Honest speed"). It stays available by
name (`--backend llama.cpp`) for vectors that tolerate it."""


class Backend:
    """One way of running the frozen LLM's forward pass over input embeddings."""

    name = "?"

    def argmax(self, embeds: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """embeds (B, T, D) float -> the argmax token ids (B, n) of the last n positions (long, on CPU).
        mask: (B, T), 0 on left padding (an in-context encoder's batch), or None for none."""
        raise NotImplementedError


class TorchBackend(Backend):
    """The model as loaded by `nar.llm.load_llm`, in this process. `precision` as in `FrozenLLM.autocast`."""

    name = "torch"

    def __init__(self, llm, precision: str = "fp32"):
        self.llm, self.precision = llm, precision

    @torch.no_grad()
    def logits(self, embeds: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> logits (B, n, V) of the last n positions."""
        from nar.llm import forward_kwargs, last_positions

        embeds = embeds.to(self.llm.device, self.llm.dtype)
        kwargs = forward_kwargs(None if mask is None else mask.to(self.llm.device))
        with self.llm.autocast(self.precision):
            out = self.llm.model(inputs_embeds=embeds, use_cache=False,
                                 logits_to_keep=last_positions(embeds.shape[1], n, embeds.device), **kwargs)
        return out.logits[:, -n:]

    def argmax(self, embeds: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(embeds, n, mask).argmax(-1).cpu()


class LlamaCppBackend(Backend):
    """A GGUF model run by llama.cpp (llama-cpp-python's C API), fed input embeddings.

    One call = one `llama_decode` over a batch that holds every text as its own sequence (positions from 0,
    its own sequence id, so the texts do not attend to each other); logits are requested only for the last
    n positions of each. The context is rebuilt when a call needs more room than the last one.
    """

    name = "llama.cpp"

    def __init__(self, gguf_path: str | Path, threads: int | None = None):
        import llama_cpp as lc

        self.lc, self.path = lc, str(gguf_path)
        self.threads = int(threads or torch.get_num_threads())
        _quiet_llama(lc)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(self.path.encode(), lc.llama_model_default_params())
        if not self.model:
            raise NarError(f"llama.cpp could not load {self.path}")
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.ctx, self.room = None, (0, 0)  # (sequences, tokens per sequence) the context holds
        self.batch, self.batch_cap, self.batch_embd = None, 0, 0

    # -- resources

    def _context(self, seqs: int, per_seq: int):
        lc = self.lc
        if self.ctx is not None and seqs <= self.room[0] and per_seq <= self.room[1]:
            lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
            return self.ctx
        if self.ctx is not None:
            lc.llama_free(self.ctx)
        seqs, per_seq = max(seqs, self.room[0]), max(per_seq, self.room[1])
        p = lc.llama_context_default_params()
        p.n_ctx = seqs * per_seq
        p.n_batch = p.n_ubatch = seqs * per_seq  # the whole one pass is one micro-batch
        p.n_seq_max = seqs
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = self.threads
        p.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise NarError("llama.cpp could not create a context")
        self.room = (seqs, per_seq)
        return self.ctx

    def _batch(self, n_tokens: int, embd: int):
        lc = self.lc
        if self.batch is None or n_tokens > self.batch_cap or embd != self.batch_embd:
            if self.batch is not None:
                lc.llama_batch_free(self.batch)
            self.batch = lc.llama_batch_init(n_tokens, embd, 1)
            self.batch_cap, self.batch_embd = n_tokens, embd
        return self.batch

    def _fill(self, batch, seq: list[int], pos: list[int], out: list[bool]) -> None:
        batch.n_tokens = len(seq)
        for i, (s, p, o) in enumerate(zip(seq, pos, out)):
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = o

    def _decode(self, ctx, batch, n_out: int) -> torch.Tensor:
        rc = self.lc.llama_decode(ctx, batch)
        if rc != 0:
            raise NarError(f"llama_decode failed with code {rc}")
        ptr = self.lc.llama_get_logits(ctx)
        import numpy as np

        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).argmax(-1))

    # -- the one pass

    def argmax(self, embeds: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = embeds.shape
        if d != self.n_embd:
            raise NarError(f"embeddings of width {d}, but {self.path} has {self.n_embd}")
        keep = torch.ones(b, t, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
        lengths = keep.sum(1).tolist()  # each text its own sequence, its left padding dropped
        ctx = self._context(b, max(lengths))
        batch = self._batch(sum(lengths), d)
        x = embeds.detach().to("cpu", torch.float32)[keep].contiguous()
        ctypes.memmove(batch.embd, x.data_ptr(), x.numel() * 4)
        self._fill(batch, [j for j in range(b) for _ in range(lengths[j])], [i for k in lengths for i in range(k)],
                   [i >= k - n for k in lengths for i in range(k)])
        return self._decode(ctx, batch, b * n).view(b, n).long()

    # -- the autoregressive baseline (bench/generate_speed.py), same engine, same weights

    def greedy(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """Greedy decoding with llama.cpp's KV cache: exactly n new tokens per prompt (EOS not special)."""
        b, width = len(prompts), max(len(p) for p in prompts)
        ctx = self._context(b, width + n)
        batch = self._batch(b * width, 0)
        k = 0
        seq, pos, out = [], [], []
        for j, p in enumerate(prompts):
            for i, tok in enumerate(p):
                batch.token[k] = tok
                seq.append(j), pos.append(i), out.append(i == len(p) - 1)
                k += 1
        self._fill(batch, seq, pos, out)
        nxt = self._decode(ctx, batch, b).tolist()
        result = [[x] for x in nxt]
        lengths = [len(p) for p in prompts]
        for step in range(1, n):
            for j in range(b):
                batch.token[j] = nxt[j]
            self._fill(batch, list(range(b)), [lengths[j] + step - 1 for j in range(b)], [True] * b)
            nxt = self._decode(ctx, batch, b).tolist()
            for j in range(b):
                result[j].append(nxt[j])
        return result

    def close(self) -> None:
        lc = self.lc
        if self.batch is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            lc.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


_LOG_CALLBACK = None


def _quiet_llama(lc) -> None:
    """llama.cpp logs every load to stderr; route it to nowhere (kept referenced: C holds the pointer)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


# ----------------------------------------------------------------------------------------------
# Selection


def gguf_for(llm) -> Path | None:
    """The GGUF file this LLM was dequantised from (the embedded default), else None.

    The default's cache folder records its source file and fingerprint (`nar_model.json`); a model loaded from
    anywhere else has no GGUF twin that nar knows to be the same weights. The cache is shared by every
    environment of the user, so when the recorded file is gone (its environment was deleted) the installed
    wheel's GGUF stands in, if it is the same file (its hash, when recorded, else its name and size)."""
    from nar.llm import default_gguf_path, file_digest

    meta_file = Path(getattr(llm.model, "name_or_path", "") or ".") / "nar_model.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != llm.fingerprint:
        return None
    path = Path(meta.get("source", ""))
    if path.is_file():
        return path
    try:
        installed = default_gguf_path()
    except NarError:
        return None
    if "source_digest" in meta:
        return installed if file_digest(installed) == meta["source_digest"] else None
    same = installed.name == path.name and meta.get("source_bytes") in (None, installed.stat().st_size)
    return installed if same else None


def unavailable(name: str, llm, precision: str = "fp32") -> str | None:
    """Why backend `name` cannot run this LLM (None when it can)."""
    if name == "torch":
        return None
    if name == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return 'llama-cpp-python is not installed (pip install "nar[fast]")'
        if llm.precision(precision) != "fp32":
            return f"llama.cpp runs its own quantised arithmetic; precision {precision!r} asks for torch's"
        if str(llm.device) != "cpu":
            return "llama.cpp backend is wired for CPU only; the model is on " + str(llm.device)
        if gguf_for(llm) is None:
            return f"no GGUF file for {llm.name} (llama.cpp runs only the embedded default model)"
        return None
    return f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}"


_CACHE: dict[tuple, Backend] = {}


def get_backend(name: str | Backend | None, llm, precision: str = "fp32") -> Backend:
    """A ready backend. `auto` (or None) takes the first runnable of AUTO_ORDER, else torch; a backend named
    explicitly that cannot run this LLM raises NarError with the reason."""
    if isinstance(name, Backend):
        return name
    name = name or "auto"
    if name == "auto":
        name = next((b for b in AUTO_ORDER if unavailable(b, llm, precision) is None), "torch")
    elif (why := unavailable(name, llm, precision)) is not None:
        raise NarError(f"backend {name!r} unavailable: {why}")
    if name == "torch":
        return TorchBackend(llm, precision)
    key = (name, llm.fingerprint, torch.get_num_threads())
    if key not in _CACHE:
        _CACHE[key] = LlamaCppBackend(gguf_for(llm))
    return _CACHE[key]


def backend_report(llm, precision: str = "fp32") -> dict[str, str]:
    """name -> 'available' or the reason it is not (for `--backend` help and the benchmark header)."""
    return {b: unavailable(b, llm, precision) or "available" for b in BACKENDS}


__all__ = ["AUTO_ORDER", "BACKENDS", "Backend", "LlamaCppBackend", "TorchBackend", "backend_report",
           "get_backend", "gguf_for", "unavailable"]
