"""The encoder: source text -> proto-tokens (e, m) in the frozen LLM's input space, plus the length N.

    source --backbone (sentence-transformers, frozen by default)--> token states (B, L, H)
           --linear--> (B, L, d) --2-layer transformer decoder, 3 learned queries--> (B, 3, d)
           --> e = W_e q_0, m = W_m q_1 (each (B, D)), length logits = W_n q_2 ((B, max_len); class k -> N = k+1)

Length: a classification head (targets without EOS have no other way to say where they end); with corpora
fitted with --append-eos the decoded text is also cut at the first EOS. The e/m output biases start at the
training corpus's mean proto-tokens, so an untrained encoder is the mean-proto-token baseline.

A checkpoint folder holds `model.safetensors` (the head, plus the backbone when it was fine-tuned) and
`config.json` (encoder config, LLM and backbone fingerprints, corpus, layout, training state).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

from nar import __version__
from nar.config import EncoderConfig
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout

log = logging.getLogger(__name__)


class ProtoHead(nn.Module):
    def __init__(self, in_dim: int, llm_dim: int, cfg: EncoderConfig):
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.d_model)
        self.queries = nn.Parameter(torch.randn(3, cfg.d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, 4 * cfg.d_model, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out_e = nn.Linear(cfg.d_model, llm_dim)
        self.out_m = nn.Linear(cfg.d_model, llm_dim)
        self.out_len = nn.Linear(cfg.d_model, cfg.max_len)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """states (B, L, H), mask (B, L) True on real tokens -> e (B, D), m (B, D), length logits (B, max_len)."""
        mem = self.inp(states)
        q = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        h = self.norm(self.decoder(q, mem, memory_key_padding_mask=~mask))
        return self.out_e(h[:, 0]), self.out_m(h[:, 1]), self.out_len(h[:, 2])


class Encoder(nn.Module):
    """Backbone + head. `meta` carries the provenance written into every checkpoint."""

    def __init__(self, cfg: EncoderConfig, backbone, tokenizer, llm_dim: int, meta: dict):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = ProtoHead(backbone.config.hidden_size, llm_dim, cfg)
        self.meta = meta
        for p in self.backbone.parameters():
            p.requires_grad_(not cfg.freeze_backbone)

    @property
    def device(self) -> torch.device:
        return self.head.queries.device

    def tokenize(self, sources: list[str]) -> tuple[dict, int]:
        """Backbone inputs for a batch, and how many sources were truncated."""
        for s in sources:
            if not s or not s.strip():
                raise NarError("empty source text")
        full = self.tokenizer(sources, add_special_tokens=True)["input_ids"]
        truncated = sum(len(x) > self.cfg.max_source_tokens for x in full)
        enc = self.tokenizer(sources, padding=True, truncation=True, max_length=self.cfg.max_source_tokens,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}, truncated

    def forward(self, sources: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """e (B, D), m (B, D), length logits (B, max_len)."""
        enc, truncated = self.tokenize(sources)
        if truncated:
            log.warning("%d source(s) longer than %d tokens were truncated", truncated, self.cfg.max_source_tokens)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_backbone):
            states = self.backbone(**enc).last_hidden_state
        return self.head(states, enc["attention_mask"].bool())

    @torch.no_grad()
    def predict(self, sources: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """e, m (B, D) on CPU, and the predicted lengths N; the sources go through in batches of batch_size."""
        was = self.training
        self.eval()
        es, ms, ns = [], [], []
        for lo in range(0, len(sources), batch_size):
            e, m, len_logits = self(sources[lo:lo + batch_size])
            es.append(e.float().cpu())
            ms.append(m.float().cpu())
            ns += (len_logits.argmax(-1) + 1).tolist()
        self.train(was)
        return torch.cat(es), torch.cat(ms), ns

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        from nar.artifacts import atomic_write_bytes

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if not self.cfg.freeze_backbone:
            state.update({f"backbone.{k}": v.detach().cpu().contiguous()
                          for k, v in self.backbone.state_dict().items()})
        tmp = path / ".tmp-model.safetensors"
        save_file(state, str(tmp))
        tmp.replace(path / "model.safetensors")
        cfg = {"encoder_config": self.cfg.to_dict(), **self.meta, **(extra or {}), "nar_version": __version__}
        atomic_write_bytes(path / "config.json", json.dumps(cfg, indent=2).encode())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Encoder:
        from safetensors.torch import load_file

        path = Path(path)
        if (path / "best" / "config.json").is_file() and not (path / "config.json").is_file():
            path = path / "best"  # a run folder: take its best checkpoint
        if not (path / "config.json").is_file():
            raise NarError(f"{path} is not an encoder checkpoint (no config.json)")
        meta = json.loads((path / "config.json").read_text())
        cfg = EncoderConfig.from_dict(meta.pop("encoder_config"))
        backbone, tokenizer, fingerprint = load_backbone(cfg.backbone)
        if meta.get("backbone", {}).get("fingerprint") not in (None, fingerprint) and cfg.freeze_backbone:
            raise NarError(f"checkpoint expects backbone {meta['backbone']['fingerprint']}, found {fingerprint}")
        enc = cls(cfg, backbone, tokenizer, meta["llm"]["hidden_size"], meta)
        state = load_file(str(path / "model.safetensors"))
        enc.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        bb = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
        if bb:
            enc.backbone.load_state_dict(bb)
        return enc.to(device).eval()

    def check_llm(self, llm: FrozenLLM) -> None:
        fp = self.meta["llm"]["fingerprint"]
        if fp != llm.fingerprint:
            raise NarError(f"this encoder was trained for LLM {fp}, but the loaded LLM is {llm.fingerprint}")

    @property
    def layout(self) -> Layout:
        return Layout.from_dict(self.meta["layout"])


def load_backbone(name: str):
    """(transformer, tokenizer, fingerprint) of a sentence-transformers model (the embedded default too)."""
    from nar.teacher import load_teacher

    t = load_teacher(name)
    return t.model[0].auto_model, t.model[0].tokenizer, t.fingerprint
