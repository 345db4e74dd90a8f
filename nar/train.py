"""Training and evaluating the encoder (source -> proto-tokens), and the baselines it must beat.

Losses per batch (weights in TrainConfig):
  reg = mean over e and m of [ (1 - cos(pred, target)) + |unit(pred) - unit(target)|^2 ]
  ce  = reconstruction cross-entropy of the target tokens from ONE teacher-forced pass of the frozen
        LLM on the predicted (e, m), gradients flowing through the frozen LLM into the encoder
  len = cross-entropy of the length head against the true N
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nar import corpus as corpus_store
from nar.config import EncoderConfig, TrainConfig
from nar.decode import decode_ids, token_accuracy
from nar.encoder import Encoder, load_backbone
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout, frozen_llm_info


@dataclass
class Rows:
    """Corpus rows used for training/evaluation."""

    ids: list[str]
    sources: list[str]
    token_ids: list[list[int]]
    e: torch.Tensor
    m: torch.Tensor

    def take(self, idx: list[int]) -> Rows:
        return Rows([self.ids[i] for i in idx], [self.sources[i] for i in idx], [self.token_ids[i] for i in idx],
                    self.e[idx], self.m[idx])

    def __len__(self) -> int:
        return len(self.ids)


def load_rows(path: str | Path, min_accuracy: float) -> Rows:
    t = corpus_store.read_table(path)
    keep = [i for i in range(t.num_rows) if not t.column("failed")[i].as_py()
            and t.column("accuracy")[i].as_py() >= min_accuracy - 1e-6]
    if len(keep) < 2:
        raise NarError(f"corpus {path} has {len(keep)} rows at accuracy >= {min_accuracy}; need at least 2")
    col = {c: t.column(c) for c in ("id", "source", "target", "token_ids", "e", "m")}
    return Rows(ids=[col["id"][i].as_py() for i in keep],
                sources=[col["source"][i].as_py() or col["target"][i].as_py() for i in keep],
                token_ids=[col["token_ids"][i].as_py() for i in keep],
                e=torch.tensor([col["e"][i].as_py() for i in keep]),
                m=torch.tensor([col["m"][i].as_py() for i in keep]))


def split(rows: Rows, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_frac * len(rows)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def targets_without_eos(ids: list[int], eos: int | None, stop_at_eos: bool) -> list[int]:
    return ids[:-1] if stop_at_eos and ids and ids[-1] == eos else ids


def losses(enc: Encoder, llm: FrozenLLM, batch: Rows, layout: Layout, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    e, m, len_logits = enc(batch.sources)
    te, tm = batch.e.to(e.device), batch.m.to(e.device)
    reg = sum((1 - F.cosine_similarity(p, t, dim=-1)).mean()
              + (F.normalize(p, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean()
              for p, t in ((e, te), (m, tm))) / 2
    out = {"reg": reg}
    n = max(len(x) for x in batch.token_ids)
    if cfg.w_ce > 0:
        tgt = torch.full((len(batch), n), -100, dtype=torch.long, device=e.device)
        for j, ids in enumerate(batch.token_ids):
            tgt[j, : len(ids)] = torch.tensor(ids)
        with llm.autocast(cfg.precision):
            logits = llm.proto_logits(e, m, n, layout)
        out["ce"] = F.cross_entropy(logits.float().transpose(1, 2), tgt, ignore_index=-100)
    lengths = torch.tensor([min(len(x), enc.cfg.max_len) - 1 for x in batch.token_ids], device=e.device)
    out["len"] = F.cross_entropy(len_logits, lengths)
    out["total"] = cfg.w_reg * out["reg"] + cfg.w_ce * out.get("ce", 0.0) + cfg.w_len * out["len"]
    return out


@torch.no_grad()
def evaluate_predictions(llm: FrozenLLM, e: torch.Tensor, m: torch.Tensor, n: list[int], rows: Rows, layout: Layout,
                         precision: str, stop_at_eos: bool) -> dict[str, float]:
    """Token accuracy and exact match of one-pass decoding of the given proto-tokens against the targets."""
    pred = decode_ids(llm, e, m, n, layout, precision=precision, stop_at_eos=stop_at_eos)
    tg = [targets_without_eos(t, llm.eos_id, stop_at_eos) for t in rows.token_ids]
    accs = [token_accuracy(p, t) for p, t in zip(pred, tg)]
    return {"token_acc": sum(accs) / len(accs), "exact_match": sum(p == t for p, t in zip(pred, tg)) / len(tg)}


def evaluate_encoder(enc: Encoder, llm: FrozenLLM, rows: Rows, layout: Layout, precision: str, stop_at_eos: bool,
                     batch_size: int = 32) -> dict[str, float]:
    e, m, n = enc.predict(rows.sources, batch_size)
    return evaluate_predictions(llm, e, m, n, rows, layout, precision, stop_at_eos)


def baseline_mean(train: Rows, rows: Rows, llm, layout, precision, stop_at_eos) -> dict[str, float]:
    """The mean training proto-token, decoded at each text's true length (a generous baseline)."""
    e = train.e.mean(0, keepdim=True).expand(len(rows), -1)
    m = train.m.mean(0, keepdim=True).expand(len(rows), -1)
    return evaluate_predictions(llm, e, m, [len(t) for t in rows.token_ids], rows, layout, precision, stop_at_eos)


def baseline_nearest(train: Rows, rows: Rows, llm, layout, precision, stop_at_eos, teacher, exclude_self: bool
                     ) -> dict[str, float]:
    """Teacher embedding of the source -> nearest training source (FAISS, cosine) -> its stored proto-tokens,
    decoded at its own length. On training rows the row itself is excluded (leave-one-out)."""
    from nar.index import make_faiss_index

    tv = F.normalize(teacher.encode(train.sources), dim=-1).numpy()
    q = F.normalize(teacher.encode(rows.sources), dim=-1).numpy()
    index = make_faiss_index(tv, "flat")
    _, idx = index.search(q, 2 if exclude_self else 1)
    pick = []
    for j, row in enumerate(idx):
        cand = [int(i) for i in row if not (exclude_self and train.ids[int(i)] == rows.ids[j])]
        pick.append(cand[0])
    return evaluate_predictions(llm, train.e[pick], train.m[pick], [len(train.token_ids[i]) for i in pick], rows,
                                layout, precision, stop_at_eos)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train_encoder(corpus_path: str | Path, cfg: TrainConfig, enc_cfg: EncoderConfig, *, llm: FrozenLLM,
                  show_progress: bool = True) -> dict:
    """The training loop: eval, save, step, log. Returns the final validation figures."""
    from nar.corpus import fingerprint as corpus_fingerprint
    from nar.frame import corpus_llm
    from nar.monitor import TensorBoardWriter

    llm, layout, _ = corpus_llm(corpus_path, llm)
    man = corpus_store.read_manifest(corpus_path)
    stop_at_eos = bool(man.get("fit_config", {}).get("append_eos"))
    rows = load_rows(corpus_path, cfg.min_accuracy)
    tr_idx, va_idx = split(rows, cfg.val_frac, cfg.seed)
    train, val = rows.take(tr_idx), rows.take(va_idx)
    run = Path(cfg.run_dir)
    torch.manual_seed(cfg.seed)
    backbone, tokenizer, bb_fp = load_backbone(enc_cfg.backbone)
    meta = {"llm": frozen_llm_info(llm), "backbone": {"name": enc_cfg.backbone, "fingerprint": bb_fp},
            "layout": layout.to_dict(), "stop_at_eos": stop_at_eos,
            "corpus": {"path": str(Path(corpus_path).resolve()), "fingerprint": corpus_fingerprint(corpus_path),
                       "train": len(train), "val": len(val), "val_ids": val.ids},
            "train_config": cfg.to_dict()}
    enc = Encoder(enc_cfg, backbone, tokenizer, llm.hidden_size, meta).to(llm.device)
    with torch.no_grad():  # start at the mean proto-token: the untrained encoder is that baseline
        enc.head.out_e.bias.copy_(train.e.mean(0))
        enc.head.out_m.bias.copy_(train.m.mean(0))
        enc.head.out_e.weight.mul_(0.1)
        enc.head.out_m.weight.mul_(0.1)
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best = 0, -1.0
    if cfg.resume:
        start, best = _resume(run / "last", enc, opt)
    tb = TensorBoardWriter(run / "tb")
    g = random.Random(cfg.seed + start)
    from rich.progress import Progress

    last_val: dict = {}
    t0 = time.perf_counter()
    with Progress(disable=not show_progress) as prog:
        task = prog.add_task("train-encoder", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            if step % cfg.val_every == 0 or step == cfg.steps - 1:
                last_val = evaluate_encoder(enc, llm, val, layout, cfg.precision, stop_at_eos)
                tb.scalar("encoder/val_token_acc", last_val["token_acc"], step)
                tb.scalar("encoder/val_exact_match", last_val["exact_match"], step)
                if last_val["token_acc"] > best:
                    best = last_val["token_acc"]
                    enc.save_pretrained(run / "best", {"train_state": {"step": step, "val": last_val}})
            batch = train.take([g.randrange(len(train)) for _ in range(min(cfg.batch_size, len(train)))])
            for pg in opt.param_groups:
                pg["lr"] = _lr(step, cfg)
            enc.train()
            parts = losses(enc, llm, batch, layout, cfg)
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            for k, v in parts.items():
                tb.scalar(f"encoder/loss_{k}", float(v.detach()), step)
            tb.scalar("encoder/lr", _lr(step, cfg), step)
            prog.update(task, advance=1, description=f"train-encoder loss {float(parts['total'].detach()):.3f} "
                                                     f"val acc {last_val.get('token_acc', 0):.3f}")
        final = evaluate_encoder(enc, llm, val, layout, cfg.precision, stop_at_eos)
        if final["token_acc"] > best:
            best = final["token_acc"]
            enc.save_pretrained(run / "best", {"train_state": {"step": cfg.steps, "val": final}})
        _save_last(run / "last", enc, opt, cfg.steps, best, final)
    tb.close()
    return {"run_dir": str(run), "steps": cfg.steps, "train_texts": len(train), "val_texts": len(val),
            "val": final, "best_val_token_acc": best, "seconds": round(time.perf_counter() - t0, 1)}


def _save_last(path: Path, enc: Encoder, opt, step: int, best: float, val: dict) -> None:
    enc.save_pretrained(path, {"train_state": {"step": step, "best": best, "val": val}})
    tmp = path / ".tmp-optimizer.pt"
    torch.save(opt.state_dict(), tmp)
    tmp.replace(path / "optimizer.pt")


def _resume(path: Path, enc: Encoder, opt) -> tuple[int, float]:
    from safetensors.torch import load_file

    if not (path / "config.json").is_file():
        raise NarError(f"nothing to resume: {path} holds no checkpoint")
    state = json.loads((path / "config.json").read_text())["train_state"]
    weights = load_file(str(path / "model.safetensors"))
    enc.head.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("head.")})
    bb = {k[9:]: v for k, v in weights.items() if k.startswith("backbone.")}
    if bb:
        enc.backbone.load_state_dict(bb)
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(state["step"]), float(state["best"])


def eval_encoder(checkpoint: str | Path, corpus_path: str | Path, *, llm: FrozenLLM, teacher=None,
                 precision: str = "bf16") -> dict:
    """Token accuracy and exact match on train and validation rows: the encoder and both baselines."""
    from nar.teacher import load_teacher

    enc = Encoder.from_pretrained(checkpoint, device=llm.device)
    enc.check_llm(llm)
    meta = enc.meta
    rows = load_rows(corpus_path, meta["train_config"]["min_accuracy"])
    val_ids = set(meta["corpus"]["val_ids"])
    va = [i for i, k in enumerate(rows.ids) if k in val_ids]
    tr = [i for i, k in enumerate(rows.ids) if k not in val_ids]
    if not va:
        raise NarError("none of the checkpoint's validation ids are in this corpus")
    train, val = rows.take(tr), rows.take(va)
    layout, stop = enc.layout, bool(meta.get("stop_at_eos"))
    teacher = teacher or load_teacher(meta["backbone"]["name"])
    out = []
    for split_name, part, loo in (("train", train, True), ("val", val, False)):
        out.append({"split": split_name, "method": "encoder", "texts": len(part),
                    **evaluate_encoder(enc, llm, part, layout, precision, stop)})
        out.append({"split": split_name, "method": "nearest neighbour", "texts": len(part),
                    **baseline_nearest(train, part, llm, layout, precision, stop, teacher, exclude_self=loo)})
        out.append({"split": split_name, "method": "mean proto-token", "texts": len(part),
                    **baseline_mean(train, part, llm, layout, precision, stop)})
    return {"checkpoint": str(checkpoint), "corpus": str(corpus_path), "rows": out}
