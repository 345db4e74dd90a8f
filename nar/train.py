"""Training the encoder (source -> proto-tokens): amortised, from text sources, on one or many processes.

Losses per step, over the global batch (weights in TrainConfig):
  ce  = reconstruction cross-entropy of every target token from ONE pass of the frozen LLM over the predicted
        [prefix (or source, in-context encoders), e, m x (N-1)], gradients flowing through the frozen LLM into
        the encoder (pooled over the batch's tokens)
  len = 0.1 x the length head's cross-entropy against the true N (mean over texts)
  reg = (from a corpus folder only) w_reg x mean over e and m of [(1 - cos(pred, fitted)) + |unit(pred) -
        unit(fitted)|^2]

Distributed (`accelerate launch`, `torchrun`): every process draws the same global batch (a generator seeded by
step), takes its slice and splits it into `grad_accum` micro-batches; each micro-batch's loss is its sum divided by
the GLOBAL batch's token (or text) count, and the gradients are summed over processes, so the step equals the
one-process step on the whole batch whatever the world size. Dropout is seeded by (seed, step, rank, micro-batch).
Nothing else holds random state, so `last/` (weights + optimizer) resumes bit for bit at the same world size and
from the same weights at another. Only the main process validates, writes checkpoints and TensorBoard.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nar import faults
from nar.artifacts import atomic_dir, llm_record, read_json, recover_dir
from nar.config import EncoderConfig, TrainConfig
from nar.data import Pairs, TextMixture, run_layout, training_data
from nar.encoder import Encoder, make_reader, reader_info
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout, context_for
from nar.losses import reconstruction_loss
from nar.schedule import warmup_cosine

log = logging.getLogger(__name__)

W_LEN = 0.1
"""Weight of the length head's cross-entropy."""
GRAD_CLIP = 1.0
"""Gradient-norm clipping of every step."""


def losses(enc: Encoder, llm: FrozenLLM, batch: Pairs, layout: Layout, cfg: TrainConfig,
           n_tokens: int | None = None, n_texts: int | None = None) -> dict[str, torch.Tensor]:
    """The loss parts of `batch`. `n_tokens`/`n_texts`: the global batch's target tokens and texts, when `batch`
    is a slice of it (the parts are then sums over the slice divided by the global counts); default: its own."""
    n_tokens = n_tokens or sum(len(x) for x in batch.token_ids)
    n_texts = n_texts or len(batch)
    with llm.autocast(cfg.precision):
        e, m, len_logits = enc(batch.sources)
    e, m, len_logits = e.float(), m.float(), len_logits.float()
    ctx = context_for(enc.context_ids(batch.sources, llm), layout, e.device)
    rec = reconstruction_loss(llm, e, m, batch.token_ids, layout, cfg.precision, ctx)
    out = {"ce": rec.token_sum() / n_tokens}
    lengths = torch.tensor([min(len(x), enc.cfg.max_len) - 1 for x in batch.token_ids], device=e.device)
    out["len"] = F.cross_entropy(len_logits, lengths, reduction="sum") / n_texts
    total = out["ce"] + W_LEN * out["len"]
    if batch.e is not None and cfg.w_reg > 0:
        te, tm = batch.e.to(e.device), batch.m.to(e.device)
        out["reg"] = sum((1 - F.cosine_similarity(p, t, dim=-1)).sum()
                         + (F.normalize(p, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).sum()
                         for p, t in ((e[:, 0], te), (m, tm))) / (2 * n_texts)
        total = total + cfg.w_reg * out["reg"]
    out["total"] = total
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)


def _word_after(tok, prev: int, i: int) -> str | None:
    """The text token i adds after token prev when it starts a new word (a space between them), else None."""
    head, both = tok.decode([prev]), tok.decode([prev, i])
    return both[len(head) + 1:] if both.startswith(head + " ") else None


def novel_token_pool(llm: FrozenLLM, seen: torch.Tensor, ref: int) -> list[int]:
    """Ids of the word-start tokens (a space, then 2+ letters) no training target holds (`seen`: (V,) counts)."""
    tok = llm.tokenizer
    special = set(tok.all_special_ids)
    pool = [i for i in range(len(tok)) if (i >= len(seen) or seen[i] == 0) and i not in special
            and len(w := _word_after(tok, ref, i) or "") >= 2 and w.isalpha()]
    if not pool:
        raise NarError("--novel-tokens: this tokenizer has no word-start token outside the training targets")
    return pool


def with_novel_tokens(batch: Pairs, rate: float, pool: list[int], llm: FrozenLLM, max_tokens: int,
                      seed: int) -> Pairs:
    """`TrainConfig.novel_tokens`: in a `rate` share of the batch's texts one word-start token after the first
    is replaced by a random token of `pool`; source and target become the new text (re-tokenised; a text that
    would outgrow max_tokens is left as it was). Seeded by `seed` alone, so every process and a resumed run draw
    the same."""
    g = torch.Generator().manual_seed(seed)
    tok = llm.tokenizer
    out = batch.take(list(range(len(batch))))
    for j, ids in enumerate(out.token_ids):
        if float(torch.rand(1, generator=g)) >= rate:
            continue
        starts = [i for i in range(1, len(ids)) if _word_after(tok, ids[i - 1], ids[i]) is not None]
        if not starts:
            continue
        new = list(ids)
        at = starts[int(torch.randint(len(starts), (1,), generator=g))]
        new[at] = pool[int(torch.randint(len(pool), (1,), generator=g))]
        text = tok.decode(new, clean_up_tokenization_spaces=False)
        again = llm.encode(text)
        if len(again) <= max_tokens:
            out.sources[j] = out.targets[j] = text
            out.token_ids[j] = again
    return out


def init_from(cfg: TrainConfig, enc_cfg: EncoderConfig, llm: FrozenLLM, layout: Layout
              ) -> tuple[EncoderConfig, Encoder | None]:
    """The encoder options of a run and, with --init-from, the checkpoint to start from (checked against this
    run's LLM and layout): its options replace the defaults; options given besides them must agree."""
    if not cfg.init_from:
        return enc_cfg, None
    base = Encoder.from_pretrained(cfg.init_from, llm=llm)
    theirs, default = base.cfg.to_dict(), EncoderConfig().to_dict()
    clash = sorted(k for k, v in enc_cfg.to_dict().items() if v != default[k] and v != theirs[k])
    if clash:
        raise NarError(f"--init-from {cfg.init_from} fixes the encoder options; these differ from it: "
                       + ", ".join(f"{k}={getattr(enc_cfg, k)!r} (checkpoint: {theirs[k]!r})" for k in clash))
    if base.layout != layout:
        raise NarError(f"--init-from {cfg.init_from}: trained with layout {base.layout.to_dict()}, this run uses "
                       f"{layout.to_dict()}")
    return base.cfg, base


class _Draws:
    """The global batch of each step, from a TextMixture (lazy) or in-memory Pairs (a corpus folder)."""

    def __init__(self, train: TextMixture | Pairs, cfg: TrainConfig):
        self.train, self.cfg = train, cfg
        if isinstance(train, Pairs):
            self.lengths = torch.tensor([len(x) for x in train.token_ids])

    def cap(self, step: int) -> int:
        """The longest target drawn at `step` (the length curriculum)."""
        if self.cfg.curriculum <= 0:
            return self.cfg.max_tokens
        return int(4 + (self.cfg.max_tokens - 4) * min(1.0, step / self.cfg.curriculum))

    def batch(self, step: int) -> Pairs:
        seed, n = self.cfg.seed * 1_000_003 + step, self.cfg.batch_size
        if isinstance(self.train, TextMixture):
            return self.train.pairs(self.train.draw(n, seed, self.cap(step)))
        pool = torch.nonzero(self.lengths <= self.cap(step)).flatten()
        if len(pool) == 0:
            pool = torch.argsort(self.lengths)[:n]
        pick = torch.randint(len(pool), (n,), generator=torch.Generator().manual_seed(seed))
        return self.train.take(pool[pick].tolist())


def _slices(n: int, parts: int) -> list[slice]:
    """n items cut into `parts` contiguous slices, as even as possible (the first ones one longer)."""
    q, r = divmod(n, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + q + (k < r))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def train_step(enc: Encoder, llm: FrozenLLM, batch: Pairs, layout: Layout, cfg: TrainConfig, opt,
               params: list[torch.Tensor], *, rank: int = 0, world: int = 1, step: int = 0,
               reduce=None) -> dict[str, torch.Tensor]:
    """One optimiser step on the global `batch`: this process's slice of it in cfg.grad_accum micro-batches
    (losses, backward), the gradients summed over processes by `reduce` (a function summing a tensor over
    processes; None: one process), gradient clipping, AdamW. Returns the loss parts over the global batch."""
    enc.train()
    n_tokens, n_texts = sum(len(x) for x in batch.token_ids), len(batch)
    mine = batch.take(list(range(len(batch)))[_slices(len(batch), world)[rank]])
    opt.zero_grad(set_to_none=True)
    parts: dict[str, torch.Tensor] = {}
    for k, cut in enumerate(_slices(len(mine), cfg.grad_accum)):
        micro = mine.take(list(range(len(mine)))[cut])
        if len(micro) == 0:
            continue
        torch.manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + rank) * 101 + k)  # dropout of this micro-batch
        got = losses(enc, llm, micro, layout, cfg, n_tokens, n_texts)
        got["total"].backward()
        for name, v in got.items():
            parts[name] = parts.get(name, 0.0) + v.detach()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if reduce is not None:  # one collective for all gradients and the loss parts
        names = sorted(parts)
        flat = torch.cat([g.flatten() for g in grads] + [torch.stack([torch.as_tensor(parts[n]).float()
                                                                       for n in names]).to(grads[0].device)])
        flat = reduce(flat)
        at = 0
        for p, g in zip(params, grads):
            p.grad = flat[at:at + g.numel()].view_as(g).to(g.dtype)
            at += g.numel()
        parts = dict(zip(names, flat[at:]))
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()
    return parts


def train_encoder(cfg: TrainConfig, enc_cfg: EncoderConfig, *, llm: FrozenLLM, show_progress: bool = True) -> dict:
    """The training loop: eval, save, step, log. Runs as one process, or as one of several started by
    `accelerate launch` / `torchrun` (then `llm` must sit on this process's device, `accelerate`'s
    `PartialState().device`). Returns the final held-out figures, with the trained encoder under "encoder"
    (on every process)."""
    from accelerate import PartialState
    from rich.progress import Progress

    from nar.evaluate import evaluate_encoder
    from nar.monitor import NullWriter, TensorBoardWriter

    state = PartialState()
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    if cfg.batch_size < world * cfg.grad_accum:
        raise NarError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least processes x "
                       f"--grad-accum = {world} x {cfg.grad_accum}")
    cfg = cfg.replace(precision=llm.precision(cfg.precision))  # the checkpoint records what ran, not 'auto'
    if not cfg.data:
        raise NarError("no training data: give one or more data files (or --config with data)")
    layout, stop_at_eos = run_layout(llm, cfg.data[0])
    enc_cfg, base = init_from(cfg, enc_cfg, llm, layout)
    stop_at_eos = stop_at_eos or cfg.append_eos
    train, val = training_data(cfg, llm, show_progress=show_progress and main)
    val_probe = val.take(list(range(min(cfg.val_limit, len(val)))))
    run = Path(cfg.run_dir)
    torch.manual_seed(cfg.seed)
    reader = make_reader(enc_cfg, llm)
    meta = {"llm": llm_record(llm), "reader": reader_info(enc_cfg, reader, llm),
            "layout": layout.to_dict(), "stop_at_eos": stop_at_eos,
            "data": {"train": list(cfg.data), "val": cfg.val_data, "train_texts": len(train), "val_texts": len(val),
                     "stats": train.stats, "world_size": world},
            "train_config": cfg.to_dict()}
    enc = Encoder(enc_cfg, reader, llm.hidden_size, meta).to(llm.device)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    means = (train.e.mean(0), train.m.mean(0)) if isinstance(train, Pairs) and train.e is not None else (
        emb.mean(0), emb.mean(0))
    enc.init_outputs(*means)
    if base is not None:
        enc.load_state_tensors(base.state_tensors())
    counts = train.source_counts(reader.tokenizer) if isinstance(train, TextMixture) else enc.token_counts(
        train.sources)
    if enc_cfg.unk_below:  # this run's sources decide which tokens are known (a resumed run: the same ones)
        meta["data"]["unknown_tokens"] = enc.mark_known(counts)
    pool = None
    if cfg.novel_tokens > 0:
        if enc_cfg.context != "none" or cfg.target_column not in (None, cfg.source_column) or cfg.append_eos:
            raise NarError("--novel-tokens is an autoencoding augmentation: every source must be its own target "
                           "(no --target-column, no --append-eos, no --context)")
        if isinstance(train, Pairs) and train.e is not None and cfg.w_reg > 0:
            raise NarError("--novel-tokens changes texts whose fitted proto-tokens are regression targets: use "
                           "it with text files, or with --w-reg 0")
        seen = torch.from_numpy(train.target_counts) if isinstance(train, TextMixture) else counts
        pool = novel_token_pool(llm, seen, val_probe.token_ids[0][0] if len(val_probe) else 0)
    params = enc.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best = 0, -1.0
    if cfg.resume and (run / "last").exists():
        start, best = _resume(run / "last", enc, opt)
    elif cfg.resume:
        log.info("--resume: %s has no checkpoint yet; starting from step 0", run / "last")
    draws = _Draws(train, cfg)
    reduce = None
    if world > 1:
        import torch.distributed as dist

        def reduce(x: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            return x
    tb = TensorBoardWriter(run / "tb") if main else NullWriter()
    last_val: dict = {}
    t0 = time.perf_counter()

    def validate(step: int) -> None:
        nonlocal last_val, best
        if main:
            last_val = evaluate_encoder(enc, llm, val_probe, layout, cfg.precision, stop_at_eos)
            for k in ("token_acc", "exact_match", "distinct_share"):
                tb.scalar(f"encoder/val_{k}", last_val[k], step)
            if last_val["token_acc"] > best:
                best = last_val["token_acc"]
                enc.save_pretrained(run / "best", {"train_state": {"step": step, "val": last_val}})
        state.wait_for_everyone()

    def save(step: int) -> None:
        if main:
            _save_last(run / "last", enc, opt, step, best)
        state.wait_for_everyone()

    with Progress(disable=not (show_progress and main)) as prog:
        task = prog.add_task("train-encoder", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            if step % cfg.val_every == 0:
                validate(step)
            if step > start and step % cfg.save_every == 0:
                save(step)
            batch = draws.batch(step)
            if pool is not None:
                batch = with_novel_tokens(batch, cfg.novel_tokens, pool, llm, cfg.max_tokens,
                                          cfg.seed * 1_000_003 + step)
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, cfg)
            parts = train_step(enc, llm, batch, layout, cfg, opt, params, rank=rank, world=world, step=step,
                               reduce=reduce)
            faults.point("train.step")
            for k, v in parts.items():
                tb.scalar(f"encoder/loss_{k}", float(v), step)
            tb.scalar("encoder/lr", lr_at(step, cfg), step)
            prog.update(task, advance=1, description=f"train-encoder loss {float(parts['total']):.3f} "
                                                     f"val acc {last_val.get('token_acc', 0):.3f}")
        validate(cfg.steps)
        save(cfg.steps)
    tb.close()
    return {"run_dir": str(run), "steps": cfg.steps, "world_size": world, "rank": rank, "train_texts": len(train),
            "val_texts": len(val), "data": train.stats, "val": last_val, "best_val_token_acc": best,
            "seconds": round(time.perf_counter() - t0, 1), "encoder": enc}


def _save_last(path: Path, enc: Encoder, opt, step: int, best: float) -> None:
    """Weights and optimizer state as one atomic folder: a crash while saving leaves the previous checkpoint
    whole. Nothing else is needed to resume: batches and dropout are seeded by the step."""

    def write(tmp: Path) -> None:
        enc.write_files(tmp, {"train_state": {"step": step, "best": best}})
        torch.save(opt.state_dict(), tmp / "optimizer.pt")

    atomic_dir(path, write)


def _resume(path: Path, enc: Encoder, opt) -> tuple[int, float]:
    from safetensors.torch import load_file

    recover_dir(path)
    need = ("config.json", "model.safetensors", "optimizer.pt")
    missing = [f for f in need if not (path / f).is_file()]
    if missing:
        raise NarError(f"cannot resume from {path}: missing {', '.join(missing)}")
    state = read_json(path / "config.json", "an encoder checkpoint")["train_state"]
    enc.load_state_tensors(load_file(str(path / "model.safetensors")))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(state["step"]), float(state["best"])
