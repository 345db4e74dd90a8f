"""The encoder: source text -> proto-tokens (e_1..e_k, m) in the frozen LLM's input space, plus the length N.

    source --reader--> token states (B, L, H)
           --linear--> (B, L, d) --transformer decoder, k + 2 learned queries--> (B, k + 2, d)
           --> e_j = W_e q_j (k vectors, (B, k, D)), m = W_m q_k ((B, D)),
               length logits = W_n q_{k+1} ((B, max_len); class c -> N = c + 1)

Readers (EncoderConfig.reader):
- "llm": the frozen LLM's own hidden states of the source (layer `reader_layer`); with `lora_rank > 0` a copy
  of the LLM reads the source with trainable LoRA adapters (as ICAE does) while the decoding LLM stays frozen;
- any sentence-transformers name or path (the embedded all-MiniLM-L6-v2 by default): its token states,
  frozen unless `finetune_reader`.

In-context decoding (`context` 'source' or 'chat'): the source's tokens (or the source as a chat prompt) also
stand before e in the decoding pass (`nar.llm.Context`), so the frozen LLM attends to the source while it emits
the output; the head's e and m then steer it. Still one forward pass (docs/ENCODER.md, "in-context").

Optional position codes (`pos_codes`): learned, text-independent vectors added to the m copies, so the frozen
LLM sees a different input at each output position (the proto-token layout repeats one m; see docs/ENCODER.md).
`m_readout` 'gated' goes further: position j reads a learned linear image W (g_j * m) + b_j of the one m.

The e/m output biases start at the mean token embedding (or a corpus's mean proto-tokens), so the untrained
encoder is the "mean" baseline. A checkpoint folder holds `model.safetensors` (head, plus LoRA or fine-tuned
reader weights) and `config.json` (encoder config, LLM and reader fingerprints, layout, data, training state).
"""

from __future__ import annotations

import copy
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


class ProtoHead(nn.Module):
    """Pools the reader's token states into k + 2 vectors (`pool`), then emits e_1..e_k, m and the length."""

    def __init__(self, in_dim: int, llm_dim: int, cfg: EncoderConfig):
        super().__init__()
        self.n_e = cfg.n_e
        self.inp = nn.Linear(in_dim, cfg.d_model)
        self.out_e = nn.Linear(cfg.d_model, llm_dim)
        self.out_m = nn.Linear(cfg.d_model, llm_dim)
        self.out_len = nn.Linear(cfg.d_model, cfg.max_len)
        slots = cfg.max_len * max(1, cfg.ctc_slots)  # output positions of the longest pass
        self.pos = nn.Parameter(torch.zeros(slots, llm_dim)) if cfg.pos_codes else None  # one code per slot
        if cfg.m_readout in ("gated", "blocks"):  # position j reads W (g_j * m) + b_j
            w, g = torch.eye(llm_dim), torch.ones(slots, llm_dim)  # 'gated' starts at the identity: Paper A's pass
            if cfg.m_readout == "blocks":  # disjoint blocks of m, each spread over all D by one fixed rotation
                k = min(cfg.read_blocks, llm_dim)
                block = torch.arange(llm_dim) * k // llm_dim  # coordinate -> its block
                g = (block[None, :] == (torch.arange(slots) % k)[:, None]).float()
                rot, _ = torch.linalg.qr(torch.randn(llm_dim, llm_dim, generator=torch.Generator().manual_seed(0)))
                w = rot * k ** 0.5  # a block of m keeps the scale of the whole m
            self.read_w = nn.Parameter(w)
            self.read_g = nn.Parameter(g)
            self.read_b = nn.Parameter(torch.zeros(slots, llm_dim))
        self.m_readout = cfg.m_readout
        self.out_norm = cfg.out_norm
        self.center_grad = cfg.center_grad
        if cfg.center_grad:  # running mean of the pooled e/m features, used outside training
            self.register_buffer("h_mean", torch.zeros(cfg.n_e + 1, cfg.d_model))

    def _center(self, h: torch.Tensor) -> torch.Tensor:
        """center_grad: the e/m features (B, k + 1, d) minus their mean (the batch's in training, where the running
        mean is updated, else the running mean), so the output weights see only what differs between texts."""
        if self.training:
            mean = h.mean(0)
            with torch.no_grad():
                self.h_mean.lerp_(mean.detach().to(self.h_mean), 0.05)
        else:
            mean = self.h_mean.to(h)
        return h - mean

    def read_m(self, m: torch.Tensor) -> torch.Tensor:
        """What the m positions of the pass read: m (B, D) itself ('repeat'), or (B, slots, D), one text-independent
        linear image of m per position ('gated', 'blocks')."""
        if self.m_readout == "repeat":
            return m  # 'gated' and 'blocks' differ only in where W, g, b start
        return (m[:, None, :] * self.read_g) @ self.read_w.T + self.read_b

    def pool(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """states (B, L, H), mask (B, L), the source's token ids (B, L) -> (B, k + 2, d)."""
        raise NotImplementedError

    def forward(self, states: torch.Tensor, mask: torch.Tensor,
                ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """states (B, L, H), mask (B, L) True on real tokens, ids (B, L) the reader's token ids -> e (B, k, D),
        m (B, D), length logits (B, max_len)."""
        h = self.pool(states, mask, ids)
        k = self.n_e
        em = self._center(h[:, : k + 1]) if self.center_grad else h[:, : k + 1]
        e, m = self.out_e(em[:, :k]), self.out_m(em[:, k])
        if self.out_norm > 0:
            e, m = (nn.functional.normalize(x, dim=-1) * self.out_norm for x in (e, m))
        return e, m, self.out_len(h[:, k + 1])


class AttentionHead(ProtoHead):
    """head 'attention': k + 2 learned queries attend to the token states through a small transformer decoder."""

    def __init__(self, in_dim: int, llm_dim: int, cfg: EncoderConfig):
        super().__init__(in_dim, llm_dim, cfg)
        self.queries = nn.Parameter(torch.randn(cfg.n_e + 2, cfg.d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, 4 * cfg.d_model, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.d_model)

    def pool(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        mem = self.inp(states)
        q = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        return self.norm(self.decoder(q, mem, memory_key_padding_mask=~mask))


SHAPES = 16
"""Word shapes of `token_shapes`: (leading space or not) x (lower-case, capitalised, digits, other) x (short, long)."""


def token_shapes(tokenizer) -> torch.Tensor:
    """The word shape (0 .. SHAPES - 1) of every token of `tokenizer`'s vocabulary: whether it starts a word, its
    kind (all lower-case letters, a capital first, any digit, anything else) and whether it is longer than 3
    characters. (uint8, length len(tokenizer).)

    A word start is read from the piece itself where the tokenizer marks it: byte-level BPE's 'Ġ' and
    SentencePiece's '▁' prefix, WordPiece's (and word-level vocabularies') pieces without the '##' continuation
    prefix; otherwise from a leading space in the decoded text."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    wordpiece = type(model).__name__ in ("WordPiece", "WordLevel")
    shapes = torch.zeros(len(tokenizer), dtype=torch.uint8)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        piece = piece or ""
        if wordpiece:
            start, text = not piece.startswith("##"), piece.removeprefix("##")
        else:
            text = tokenizer.convert_tokens_to_string([piece]) if piece else ""
            start = piece.startswith(("\u0120", "\u2581")) or text[:1].isspace()
        word = text.strip()
        kind = (0 if word.isalpha() and word.islower() else 1 if word[:1].isupper()
                else 2 if any(c.isdigit() for c in word) else 3)
        shapes[i] = (start * 4 + kind) * 2 + (len(word) > 3)
    return shapes


class SumHead(ProtoHead):
    """head 'sum': a compositional encoder. Each source token, with its position, is mapped on its own to k + 2
    vectors, and the text's vectors are their plain sum:

        h = sum_i phi(W x_i + p_i)        (phi: `layers` residual MLP blocks; p_i: a learned position code)

    (with `bind`, W x_i * (1 + g_i) + p_i: the token's image is also scaled per position, a product binding).

    With token-level reader states (reader 'llm', reader_layer 0: the LLM's input embeddings) what "token t at
    position i" contributes does not depend on the rest of the text, so a source never seen is a new sum of
    seen parts: the encoder generalises by construction if the frozen LLM can decode such superpositions.
    With `post_layers` > 0 the last blocks act after the sum instead, h_s <- h_s + psi(h_s + c_s) per slot s
    (c_s a learned slot code): the sum of parts stays compositional, its read-out no longer linear.
    With `token_table` = r > 0, W x_i becomes W x_i + U T[t_i]: T a (vocab, r) table of zero-started rows, one per
    token id (a lookup that learns a token in a few draws), U a (d, r) projection.
    With `unk_below` > 0, W x_i becomes a learned vector u (zero-started), or W x_i + u with unk_mode 'mark', for
    every token not marked known (the `known` buffer, set from the training sources by `Encoder.mark_known`);
    with unk_mode 'shape', u is one of SHAPES learned vectors, chosen by the token's word shape (the `shape`
    buffer, `token_shapes`).
    """

    def __init__(self, in_dim: int, llm_dim: int, cfg: EncoderConfig, vocab: int = 0):
        super().__init__(in_dim, llm_dim, cfg)
        d, self.slots = cfg.d_model, cfg.n_e + 2
        if (cfg.token_table or cfg.unk_below) and vocab < 1:
            raise NarError("a per-token table or an unknown-token vector needs the reader's vocabulary size")
        self.tok_table = nn.Parameter(torch.zeros(vocab, cfg.token_table)) if cfg.token_table else None
        self.tok_proj = nn.Linear(cfg.token_table, d, bias=False) if cfg.token_table else None
        self.unk_mode, shaped = cfg.unk_mode, cfg.unk_mode == "shape"
        self.unk = nn.Parameter(torch.zeros((SHAPES, d) if shaped else d)) if cfg.unk_below else None
        if cfg.unk_below:  # every token known until mark_known says otherwise: the head starts as without it
            self.register_buffer("known", torch.ones(vocab, dtype=torch.bool))
        if cfg.unk_below and shaped:  # filled by mark_known from the reader's tokenizer, kept in the checkpoint
            self.register_buffer("shape", torch.zeros(vocab, dtype=torch.uint8))
        self.src_pos = nn.Parameter(torch.randn(cfg.max_source_tokens, d) * 0.02)
        # zero-started: a bound head begins as the unbound one
        self.src_gate = nn.Parameter(torch.zeros(cfg.max_source_tokens, d)) if cfg.bind else None
        blocks = [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(4 * d, d)) for _ in range(cfg.layers)]
        cut = cfg.layers - cfg.post_layers
        self.blocks = nn.ModuleList(blocks[:cut])
        self.split = nn.Linear(d, self.slots * d)
        self.post = nn.ModuleList(blocks[cut:])
        self.slot_code = nn.Parameter(torch.randn(self.slots, d) * 0.02) if cfg.post_layers else None

    def pool(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.inp(states)
        if self.unk is not None:
            u = (self.unk[self.shape[ids].long()] if self.unk_mode == "shape" else self.unk).to(x.dtype)
            x = torch.where(self.known[ids][..., None], x, x + u if self.unk_mode == "mark" else u)
        if self.tok_table is not None:
            x = x + self.tok_proj(self.tok_table[ids].to(x.dtype))
        if self.src_gate is not None:
            x = x * (1 + self.src_gate[: states.shape[1]])
        x = x + self.src_pos[: states.shape[1]]
        for block in self.blocks:
            x = x + block(x)
        parts = self.split(x) * mask[..., None].to(x.dtype)  # (B, L, slots * d), padding contributes nothing
        # a sum, not a mean: a token's contribution must not depend on how many others there are; the fixed
        # 1/4 keeps a ~16-token sum near the scale of one part, so the output layers start where init_outputs
        # puts them for the attention head
        h = parts.sum(1).view(states.shape[0], self.slots, -1) / 4
        if self.post:
            h = h + self.slot_code
            for block in self.post:
                h = h + block(h)
        return h


HEADS = {"attention": AttentionHead, "sum": SumHead}


class LLMReader(nn.Module):
    """Hidden states of the source from the LLM itself: the frozen one, or a copy with LoRA adapters."""

    def __init__(self, llm: FrozenLLM, layer: int, lora_rank: int):
        super().__init__()
        self.tokenizer = llm.tokenizer
        self.layer = layer
        self.hidden_size = llm.hidden_size
        base = llm.model.base_model
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            # a copy: the decoding LLM must stay exactly the frozen one
            self.net = get_peft_model(copy.deepcopy(base), LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                                      lora_dropout=0.0))
            self.trainable = True
        else:
            object.__setattr__(self, "net", base)  # not a submodule: never saved, never trained
            self.trainable = False

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
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            out = self.net(**enc, use_cache=False, output_hidden_states=self.layer != -1)
        return out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]

    def extra_state(self) -> dict[str, torch.Tensor]:
        if not self.trainable:
            return {}
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.net)

    def load_extra(self, state: dict[str, torch.Tensor]) -> None:
        if self.trainable:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.net, state)


class STReader(nn.Module):
    """Token states of a sentence-transformers model (frozen unless fine-tuned)."""

    def __init__(self, name: str, finetune: bool):
        super().__init__()
        from nar.teacher import load_teacher

        t = load_teacher(name)
        self.net, self.tokenizer, self.fingerprint = t.model[0].auto_model, t.model[0].tokenizer, t.fingerprint
        self.hidden_size = self.net.config.hidden_size
        self.trainable = finetune
        for p in self.net.parameters():
            p.requires_grad_(finetune)

    def tokenize(self, sources: list[str], max_tokens: int, device) -> tuple[dict, int]:
        full = self.tokenizer(sources, add_special_tokens=True)["input_ids"]
        truncated = sum(len(x) > max_tokens for x in full)
        enc = self.tokenizer(sources, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}, truncated

    def forward(self, enc: dict) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            return self.net(**enc).last_hidden_state

    def extra_state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict()) if self.trainable else {}

    def load_extra(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.net.load_state_dict(state)


def make_reader(cfg: EncoderConfig, llm: FrozenLLM | None) -> nn.Module:
    if cfg.reader == "llm":
        if llm is None:
            raise NarError("this encoder reads the source with the LLM: pass the frozen LLM")
        return LLMReader(llm, cfg.reader_layer, cfg.lora_rank)
    return STReader(cfg.reader, cfg.finetune_reader)


def reader_info(cfg: EncoderConfig, reader: nn.Module, llm: FrozenLLM | None) -> dict:
    fp = llm.fingerprint if cfg.reader == "llm" and llm is not None else getattr(reader, "fingerprint", None)
    return {"name": cfg.reader, "fingerprint": fp}


class Encoder(nn.Module):
    """Reader + head. `meta` carries the provenance written into every checkpoint."""

    def __init__(self, cfg: EncoderConfig, reader: nn.Module, llm_dim: int, meta: dict):
        super().__init__()
        self.cfg = cfg
        self.reader = reader
        extra = {"vocab": len(reader.tokenizer)} if cfg.token_table or cfg.unk_below else {}
        self.head = HEADS[cfg.head](reader.hidden_size, llm_dim, cfg, **extra)
        self.meta = meta

    @property
    def device(self) -> torch.device:
        return self.head.out_e.weight.device

    @property
    def pos_codes(self) -> torch.Tensor | None:
        """(max_len, D) learned offsets added to the m copies, or None."""
        return None if self.head.pos is None else self.head.pos.detach()

    def init_outputs(self, e_mean: torch.Tensor, m_mean: torch.Tensor, scale: float = 0.1) -> None:
        """Start the outputs at (e_mean, m_mean): the untrained encoder is the mean baseline."""
        with torch.no_grad():
            self.head.out_e.bias.copy_(e_mean)
            self.head.out_m.bias.copy_(m_mean)
            self.head.out_e.weight.mul_(scale)
            self.head.out_m.weight.mul_(scale)

    @torch.no_grad()
    def spread_outputs(self, sources: list[str], e_mean: torch.Tensor, m_mean: torch.Tensor,
                       radius: float) -> dict[str, float]:
        """Rescale the output layers so that, over `sources`, e's mean is `e_mean`, m's is `m_mean` and their
        mean distance from it is `radius` (a data-dependent start with a distinct point per text). Returns the
        spreads before the rescaling."""
        was, norm = self.training, self.head.out_norm
        self.eval()
        self.head.out_norm = 0.0  # spread the raw outputs; out_norm then puts them on its sphere
        try:
            e, m, _ = self(sources)
        finally:
            self.train(was)
            self.head.out_norm = norm
        before = {}
        for name, layer, x, target in (("e", self.head.out_e, e.flatten(0, -2), e_mean),
                                       ("m", self.head.out_m, m, m_mean)):
            x = x.float()
            spread = float((x - x.mean(0)).norm(dim=-1).mean())
            before[name] = spread
            if spread == 0:
                raise NarError("the encoder emits the same vector for every source: cannot spread its outputs")
            scale = radius / spread
            shift = (x.mean(0) - layer.bias) * scale  # the mean of W h after rescaling
            layer.weight.mul_(scale)
            layer.bias.copy_(target.to(layer.bias) - shift)
        return before

    def forward(self, sources: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """e (B, k, D), m (B, D), length logits (B, max_len)."""
        for s in sources:
            if not isinstance(s, str) or not s.strip():
                raise NarError("empty source text")
        enc, truncated = self.reader.tokenize(sources, self.cfg.max_source_tokens, self.device)
        if truncated:
            log.warning("%d source(s) longer than %d tokens were truncated", truncated, self.cfg.max_source_tokens)
        states = self.reader(enc)
        return self.head(states.to(self.head.inp.weight.dtype), enc["attention_mask"].bool(), enc["input_ids"])

    @torch.no_grad()
    def mark_known(self, sources: list[str]) -> int:
        """`EncoderConfig.unk_below`: mark as known the reader's tokens that occur at least unk_below times in
        `sources` (special tokens always); the rest are read as the head's unknown vector. Returns how many
        distinct tokens of the sources stay unknown."""
        tok = self.reader.tokenizer
        ids = [i for s in sources for i in tok(s, add_special_tokens=False).input_ids]
        counts = torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tok))
        known = counts >= self.cfg.unk_below
        known[[i for i in tok.all_special_ids if i < len(tok)]] = True
        self.head.known.copy_(known.to(self.head.known.device))
        if self.cfg.unk_mode == "shape":
            self.head.shape.copy_(token_shapes(tok).to(self.head.shape.device))
        return int(((counts > 0) & ~known).sum())

    @torch.no_grad()
    def predict(self, sources: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """e ((B, D), or (B, k, D) when k > 1) and m (B, D) on CPU, and the predicted lengths N."""
        was = self.training
        self.eval()
        es, ms, ns = [], [], []
        for lo in range(0, len(sources), batch_size):
            e, m, len_logits = self(sources[lo:lo + batch_size])
            es.append(e.float().cpu())
            ms.append(m.float().cpu())
            ns += (len_logits.argmax(-1) + 1).tolist()
        self.train(was)
        e = torch.cat(es)
        return (e[:, 0] if e.shape[1] == 1 else e), torch.cat(ms), ns

    def m_inputs(self, m: torch.Tensor) -> torch.Tensor:
        """The m positions' inputs from the emitted m (B, D): m itself (untouched, wherever it is), or (B, slots, D)
        under m_readout 'gated' / 'blocks' (a function of m alone: the text still reaches the LLM only through e
        and m)."""
        return m if self.cfg.m_readout == "repeat" else self.head.read_m(m.to(self.device))

    def context_ids(self, sources: list[str], llm: FrozenLLM) -> list[list[int]] | None:
        """The per-text tokens this encoder puts before e in the decoding pass, or None (Paper A's input)."""
        if self.cfg.context == "none":
            return None
        from nar.pairs import prompt_ids

        rows = [prompt_ids(llm, s, chat=self.cfg.context == "chat") for s in sources]
        return [r[-self.cfg.max_source_tokens:] if self.cfg.context == "chat" else r[: self.cfg.max_source_tokens]
                for r in rows]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ save / load

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        table = state.pop("head.tok_table", None)
        if table is not None:  # stored sparse: the rows of tokens never trained on stay zero
            rows = table.detach().abs().sum(1).nonzero().flatten()
            state["head.tok_table.rows"], state["head.tok_table.values"] = rows, table[rows]
        state.update({f"reader.{k}": v for k, v in self.reader.extra_state().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if "head.tok_table.rows" in state:
            table = torch.zeros_like(self.head.tok_table, device="cpu")
            table[state.pop("head.tok_table.rows")] = state.pop("head.tok_table.values").to(table)
            state["head.tok_table"] = table
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        self.reader.load_extra({k[7:]: v for k, v in state.items() if k.startswith("reader.")})

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the checkpoint folder atomically: a crash leaves the previous checkpoint or this one."""
        atomic_dir(path, lambda tmp: self.write_files(tmp, extra))

    def write_files(self, folder: Path, extra: dict | None = None) -> None:
        """model.safetensors and config.json into `folder` (which `atomic_dir` makes atomic as a whole)."""
        from safetensors.torch import save_file

        save_file(self.state_tensors(), str(folder / "model.safetensors"))
        cfg = {"format": FORMAT, "encoder_config": self.cfg.to_dict(), **self.meta, **(extra or {}),
               "nar_version": __version__}
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
        enc.load_state_tensors(load_file(str(path / "model.safetensors")))
        dev = device if device is not None else (llm.device if llm is not None else "cpu")
        return enc.to(dev).eval()

    def check_llm(self, llm: FrozenLLM) -> None:
        check_llm(self.meta, llm, "this encoder", verb="trained for")

    @property
    def layout(self) -> Layout:
        return Layout.from_dict(self.meta["layout"])
