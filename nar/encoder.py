"""The encoder: source text -> proto-tokens (e, m) in the frozen LLM's input space, plus the length N.

    source --reader--> token states (B, L, H) --linear + position code--> (B, L, d)
           --`layers` residual MLP blocks, each token on its own--> --split--> 3 parts per token, summed over tokens
           --> e = W_e h_0 (B, D), m = W_m h_1 (B, D), length logits = W_n h_2 (B, max_len); class c -> N = c + 1

The head is compositional: what "token t at position i" contributes does not depend on the rest of the text, so a
source never seen is a new sum of seen parts (docs/ENCODER.md, "The levers").

Readers (EncoderConfig.reader): "llm", the frozen LLM's own states of the source (layer `reader_layer`; 0 = its
input embeddings), or any sentence-transformers name or path (frozen).

In-context decoding (`context` 'source' or 'chat'): the source's tokens (or the source as a chat prompt) also
stand before e in the decoding pass (`nar.llm.Context`), so the frozen LLM attends to the source while it emits
the output; the head's e and m then steer it. Still one forward pass.

The e/m output biases start at the mean token embedding (or a corpus's mean proto-tokens), so the untrained
encoder is the "mean" baseline. A checkpoint folder holds `model.safetensors` (the head) and `config.json`
(encoder config, LLM and reader fingerprints, layout, data, training state).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

from nar import __version__
from nar.artifacts import atomic_dir, check_llm, read_json, recover_dir
from nar.config import EncoderConfig
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout

log = logging.getLogger(__name__)

FORMAT = "nar-encoder/1"
"""The checkpoint format this code writes and reads (config.json's "format"; absent in the first checkpoints)."""

MAX_SOURCE_TOKENS = 128
"""Longer sources are truncated (with a warning); the head has a learned position code for each position."""


class SumHead(nn.Module):
    """The compositional head. Each source token, with its position, is mapped on its own to 3 vectors (e, m,
    length) and the text's vectors are their plain sum:

        h = sum_i phi(W x_i + p_i)        (phi: `layers` residual MLP blocks; p_i: a learned position code)

    With token-level reader states (reader 'llm', reader_layer 0) a source never seen is a new sum of seen parts.
    With `unk_below` > 0, W x_i becomes a learned vector u (zero-started) for every token not marked known (the
    `known` buffer, set from the training sources by `Encoder.mark_known`).
    """

    slots = 3  # e, m, length

    def __init__(self, in_dim: int, llm_dim: int, cfg: EncoderConfig, vocab: int = 0):
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(in_dim, d)
        self.out_e = nn.Linear(d, llm_dim)
        self.out_m = nn.Linear(d, llm_dim)
        self.out_len = nn.Linear(d, cfg.max_len)
        if cfg.unk_below and vocab < 1:
            raise NarError("an unknown-token vector needs the reader's vocabulary size")
        self.unk = nn.Parameter(torch.zeros(d)) if cfg.unk_below else None
        if cfg.unk_below:  # every token known until mark_known says otherwise: the head starts as without it
            self.register_buffer("known", torch.ones(vocab, dtype=torch.bool))
        self.src_pos = nn.Parameter(torch.randn(MAX_SOURCE_TOKENS, d) * 0.02)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(4 * d, d))
            for _ in range(cfg.layers))
        self.split = nn.Linear(d, self.slots * d)

    def forward(self, states: torch.Tensor, mask: torch.Tensor,
                ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """states (B, L, H), mask (B, L) True on real tokens, ids (B, L) the reader's token ids -> e (B, 1, D),
        m (B, D), length logits (B, max_len)."""
        h = self.pool(states, mask, ids)
        return self.out_e(h[:, :1]), self.out_m(h[:, 1]), self.out_len(h[:, 2])

    def pool(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The summed parts (B, 3, d) from which e, m and the length are read."""
        x = self.inp(states)
        if self.unk is not None:
            x = torch.where(self.known[ids][..., None], x, self.unk.to(x.dtype))
        x = x + self.src_pos[: states.shape[1]]
        for block in self.blocks:
            x = x + block(x)
        parts = self.split(x) * mask[..., None].to(x.dtype)  # (B, L, 3 d), padding contributes nothing
        # a sum, not a mean: a token's contribution must not depend on how many others there are; the fixed 1/4
        # keeps a ~16-token sum near the scale of one part, where init_outputs puts the output layers
        return parts.sum(1).view(states.shape[0], self.slots, -1) / 4


class LLMReader(nn.Module):
    """Hidden states of the source from the frozen LLM itself (never saved, never trained)."""

    trainable = False

    def __init__(self, llm: FrozenLLM, layer: int):
        super().__init__()
        self.tokenizer = llm.tokenizer
        self.layer = layer
        self.hidden_size = llm.hidden_size
        object.__setattr__(self, "net", llm.model.base_model)  # not a submodule: never saved, never trained

    def tokenize(self, sources: list[str], max_tokens: int, device) -> tuple[dict, int]:
        full = [self.tokenizer(s, add_special_tokens=False).input_ids for s in sources]
        truncated = sum(len(x) > max_tokens for x in full)
        full = [x[:max_tokens] or [self.tokenizer.eos_token_id or 0] for x in full]
        width = max(len(x) for x in full)
        ids = torch.zeros(len(full), width, dtype=torch.long)
        mask = torch.zeros(len(full), width, dtype=torch.long)
        for j, x in enumerate(full):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, truncated

    def forward(self, enc: dict) -> torch.Tensor:
        if self.layer == 0:  # hidden_states[0] is the input embedding: no need to run the layers
            return self.net.get_input_embeddings()(enc["input_ids"])
        with torch.no_grad():
            out = self.net(**enc, use_cache=False, output_hidden_states=self.layer != -1)
        return out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]


class STReader(nn.Module):
    """Token states of a frozen sentence-transformers model."""

    trainable = False

    def __init__(self, name: str):
        super().__init__()
        from nar.teacher import load_teacher

        t = load_teacher(name)
        self.net, self.tokenizer, self.fingerprint = t.model[0].auto_model, t.model[0].tokenizer, t.fingerprint
        self.hidden_size = self.net.config.hidden_size
        for p in self.net.parameters():
            p.requires_grad_(False)

    def tokenize(self, sources: list[str], max_tokens: int, device) -> tuple[dict, int]:
        full = self.tokenizer(sources, add_special_tokens=True)["input_ids"]
        truncated = sum(len(x) > max_tokens for x in full)
        enc = self.tokenizer(sources, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}, truncated

    def forward(self, enc: dict) -> torch.Tensor:
        with torch.no_grad():
            return self.net(**enc).last_hidden_state


def make_reader(cfg: EncoderConfig, llm: FrozenLLM | None) -> nn.Module:
    if cfg.reader == "llm":
        if llm is None:
            raise NarError("this encoder reads the source with the LLM: pass the frozen LLM")
        return LLMReader(llm, cfg.reader_layer)
    return STReader(cfg.reader)


def reader_info(cfg: EncoderConfig, reader: nn.Module, llm: FrozenLLM | None) -> dict:
    fp = llm.fingerprint if cfg.reader == "llm" and llm is not None else getattr(reader, "fingerprint", None)
    return {"name": cfg.reader, "fingerprint": fp}


class Encoder(nn.Module):
    """Reader + head. `meta` carries the provenance written into every checkpoint."""

    def __init__(self, cfg: EncoderConfig, reader: nn.Module, llm_dim: int, meta: dict):
        super().__init__()
        self.cfg = cfg
        self.reader = reader
        self.head = SumHead(reader.hidden_size, llm_dim, cfg, vocab=len(reader.tokenizer))
        self.meta = meta

    @property
    def device(self) -> torch.device:
        return self.head.out_e.weight.device

    def init_outputs(self, e_mean: torch.Tensor, m_mean: torch.Tensor, scale: float = 0.1) -> None:
        """Start the outputs at (e_mean, m_mean): the untrained encoder is the mean baseline."""
        with torch.no_grad():
            self.head.out_e.bias.copy_(e_mean)
            self.head.out_m.bias.copy_(m_mean)
            self.head.out_e.weight.mul_(scale)
            self.head.out_m.weight.mul_(scale)

    def forward(self, sources: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """e (B, 1, D), m (B, D), length logits (B, max_len)."""
        for s in sources:
            if not isinstance(s, str) or not s.strip():
                raise NarError("empty source text")
        enc, truncated = self.reader.tokenize(sources, MAX_SOURCE_TOKENS, self.device)
        if truncated:
            log.warning("%d source(s) longer than %d tokens were truncated", truncated, MAX_SOURCE_TOKENS)
        states = self.reader(enc)
        return self.head(states.to(self.head.inp.weight.dtype), enc["attention_mask"].bool(), enc["input_ids"])

    @torch.no_grad()
    def mark_known(self, counts: torch.Tensor) -> int:
        """`EncoderConfig.unk_below`: mark as known the reader's tokens whose count in the training sources
        (`counts`, (V,), e.g. `nar.data.TextMixture.token_counts`) is at least unk_below (special tokens always);
        the rest are read as the head's unknown vector. Returns how many distinct seen tokens stay unknown."""
        tok = self.reader.tokenizer
        counts = counts.to(torch.long).cpu()
        if len(counts) < len(tok):
            counts = torch.cat([counts, counts.new_zeros(len(tok) - len(counts))])
        known = counts[: len(tok)] >= self.cfg.unk_below
        known[[i for i in tok.all_special_ids if i < len(tok)]] = True
        self.head.known.copy_(known.to(self.head.known.device))
        return int(((counts[: len(tok)] > 0) & ~known).sum())

    def token_counts(self, sources: list[str]) -> torch.Tensor:
        """(V,) how often each of the reader's tokens occurs in `sources`."""
        tok = self.reader.tokenizer
        ids = [i for s in sources for i in tok(s, add_special_tokens=False).input_ids]
        return torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tok))

    @torch.no_grad()
    def predict(self, sources: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """e (B, D) and m (B, D) on CPU, and the predicted lengths N."""
        was = self.training
        self.eval()
        es, ms, ns = [], [], []
        for lo in range(0, len(sources), batch_size):
            e, m, len_logits = self(sources[lo:lo + batch_size])
            es.append(e[:, 0].float().cpu())
            ms.append(m.float().cpu())
            ns += (len_logits.argmax(-1) + 1).tolist()
        self.train(was)
        return torch.cat(es), torch.cat(ms), ns

    def context_ids(self, sources: list[str], llm: FrozenLLM) -> list[list[int]] | None:
        """The per-text tokens this encoder puts before e in the decoding pass, or None (Paper A's input)."""
        if self.cfg.context == "none":
            return None
        from nar.pairs import prompt_ids

        rows = [prompt_ids(llm, s, chat=self.cfg.context == "chat") for s in sources]
        return [r[-MAX_SOURCE_TOKENS:] if self.cfg.context == "chat" else r[:MAX_SOURCE_TOKENS] for r in rows]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ save / load

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the checkpoint folder atomically: a crash leaves the previous checkpoint or this one."""
        atomic_dir(path, lambda tmp: self.write_files(tmp, extra))

    def write_files(self, folder: Path, extra: dict | None = None) -> None:
        """model.safetensors and config.json into `folder` (which `atomic_dir` makes atomic as a whole)."""
        from safetensors.torch import save_file

        save_file(self.state_tensors(), str(folder / "model.safetensors"))
        # "head": configs written before the sum head lack it (EncoderConfig.from_dict reads those as 'attention')
        cfg = {"format": FORMAT, "encoder_config": {**self.cfg.to_dict(), "head": "sum"}, **self.meta,
               **(extra or {}), "nar_version": __version__}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, llm: FrozenLLM | None = None,
                        device: str | torch.device | None = None) -> Encoder:
        """Load a checkpoint (a run folder means its best/). An LLM-reading encoder needs the frozen LLM,
        and any encoder is checked against it when given."""
        from safetensors.torch import load_file

        path = Path(path)
        recover_dir(path)
        recover_dir(path / "best")
        if (path / "best" / "config.json").is_file() and not (path / "config.json").is_file():
            path = path / "best"  # a run folder: take its best checkpoint
        if not (path / "config.json").is_file():
            raise NarError(f"{path} is not an encoder checkpoint (no config.json)")
        if not (path / "model.safetensors").is_file():
            raise NarError(f"{path} is an incomplete encoder checkpoint (no model.safetensors)")
        meta = read_json(path / "config.json", "an encoder checkpoint")
        if meta.get("format", FORMAT) != FORMAT:
            raise NarError(f"{path} is an encoder checkpoint in format {meta['format']!r}; this nar ({__version__}) "
                           f"reads {FORMAT!r}: retrain it with this version, or use the nar that wrote it")
        meta.pop("format", None)
        cfg = EncoderConfig.from_dict(meta.pop("encoder_config"))
        if llm is not None:
            check_llm(meta, llm, "this encoder", verb="trained for")
        reader = make_reader(cfg, llm)
        want = meta.get("reader", {}).get("fingerprint")
        have = reader_info(cfg, reader, llm)["fingerprint"]
        if want not in (None, have):
            raise NarError(f"checkpoint expects reader {want}, found {have}")
        enc = cls(cfg, reader, meta["llm"]["hidden_size"], meta)
        weights = path / "model.safetensors"
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NarError(f"{weights} cannot be read ({why}): the checkpoint is truncated or damaged; copy it "
                           "again or retrain it") from exc
        try:
            enc.load_state_tensors(state)
        except RuntimeError as exc:
            raise NarError(f"{weights} does not fit its config.json (" + str(exc).splitlines()[0] + ")") from exc
        dev = device if device is not None else (llm.device if llm is not None else "cpu")
        return enc.to(dev).eval()

    def check_llm(self, llm: FrozenLLM) -> None:
        check_llm(self.meta, llm, "this encoder", verb="trained for")

    @property
    def layout(self) -> Layout:
        return Layout.from_dict(self.meta["layout"])
