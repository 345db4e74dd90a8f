"""Training the encoder (source -> proto-tokens): amortised, from (source, target) pairs.

Losses per batch (weights in TrainConfig):
  ce  = reconstruction cross-entropy of the target tokens from ONE pass of the frozen LLM over the predicted
        [prefix, (source, in-context encoders only), e_1..e_k, m x (N-1)], gradients flowing through the frozen
        LLM into the encoder
  ctc = instead of ce when the encoder has ctc_slots = r: CTC of the N target tokens over r x N output slots of
        the same one pass (`nar.losses.ctc_reconstruction_loss`)
  len = cross-entropy of the length head against the true N
  reg = (from a corpus folder only) mean over e and m of [(1 - cos(pred, fitted)) + |unit(pred) - unit(fitted)|^2]

The loop (eval, save, step, log) checkpoints `last/` every `save_every` steps with the optimizer and every RNG
state it uses, so `--resume` continues bit for bit; `best/` holds the best periodic validation.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from nar.artifacts import atomic_dir, llm_record, read_json, recover_dir
from nar.config import EncoderConfig, TrainConfig
from nar.data import Pairs, run_layout, train_val_splits
from nar.encoder import Encoder, make_reader, reader_info
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout, context_for
from nar.losses import ctc_reconstruction_loss, reconstruction_loss
from nar.schedule import warmup_cosine


def token_prior_bias(token_ids: list[list[int]], vocab: int, tau: float) -> torch.Tensor:
    """(V,) tau * log of each token's smoothed frequency in `token_ids` (add-one over the vocabulary): the
    logit adjustment of `TrainConfig.logit_adjust`, text-independent."""
    counts = torch.ones(vocab)
    counts.index_add_(0, torch.tensor([t for x in token_ids for t in x], dtype=torch.long),
                      torch.ones(sum(len(x) for x in token_ids)))
    return tau * (counts / counts.sum()).log()


def losses(enc: Encoder, llm: FrozenLLM, batch: Pairs, layout: Layout, cfg: TrainConfig,
           logit_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    with llm.autocast(cfg.precision):
        e, m, len_logits = enc(batch.sources)
    e, m, len_logits = e.float(), m.float(), len_logits.float()
    out: dict[str, torch.Tensor] = {}
    if cfg.w_ce > 0:
        ctx = context_for(enc.context_ids(batch.sources, llm), layout, e.device)
        m_in = enc.m_inputs(m)
        if enc.cfg.ctc_slots:
            out["ctc"] = ctc_reconstruction_loss(llm, e, m_in, batch.token_ids, layout, enc.cfg.ctc_slots,
                                                 enc.cfg.ctc_blank, cfg.precision, enc.head.pos, ctx)
        else:
            rec = reconstruction_loss(llm, e, m_in, batch.token_ids, layout, cfg.precision, enc.head.pos, ctx,
                                      logit_bias=logit_bias, after_error=cfg.after_error_weight,
                                      state_layers=cfg.state_layers if cfg.w_state > 0 else ())
            out["ce"] = rec.token_mean()
            if rec.state is not None:
                out["state"] = rec.state.mean()
    lengths = torch.tensor([min(len(x), enc.cfg.max_len) - 1 for x in batch.token_ids], device=e.device)
    out["len"] = F.cross_entropy(len_logits, lengths)
    total = cfg.w_ce * out.get("ce", out.get("ctc", 0.0)) + cfg.w_len * out["len"] + cfg.w_state * out.get("state", 0.0)
    if batch.e is not None and cfg.w_reg > 0:
        te, tm = batch.e.to(e.device), batch.m.to(e.device)
        out["reg"] = sum((1 - F.cosine_similarity(p, t, dim=-1)).mean()
                         + (F.normalize(p, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean()
                         for p, t in ((e[:, 0], te), (m, tm))) / 2
        total = total + cfg.w_reg * out["reg"]
    out["total"] = total
    return out


def train_step(enc: Encoder, llm: FrozenLLM, batch: Pairs, layout: Layout, cfg: TrainConfig, opt,
               params: list[torch.Tensor], logit_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on `batch` (losses, backward, gradient clipping, AdamW); returns the loss parts."""
    enc.train()
    parts = losses(enc, llm, batch, layout, cfg, logit_bias)
    opt.zero_grad(set_to_none=True)
    parts["total"].backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return parts


def ctc_blank_id(llm: FrozenLLM) -> int:
    """The default CTC blank: the tokenizer's lowest special token that is neither EOS, BOS nor padding (it never
    occurs in a tokenised text; SmolLM2: <|endoftext|>, id 0)."""
    tok = llm.tokenizer
    taken = {llm.eos_id, llm.pad_id, tok.bos_token_id}
    free = sorted(i for i in tok.all_special_ids if i not in taken)
    if not free:
        raise NarError("this tokenizer has no special token to serve as the CTC blank: pass --ctc-blank ID "
                       "(a token id no target uses)")
    return free[0]


def param_groups(enc: Encoder, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: the encoder at lr, its per-token table (if any) at table_lr without weight decay (a row
    sits still between the batches that hold its token and must not decay meanwhile). `lr_scale` is each
    group's share of the scheduled rate."""
    table = getattr(enc.head, "tok_table", None)
    rest = [p for p in enc.trainable_parameters() if p is not table]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if table is not None:
        groups.append({"params": [table], "lr_scale": cfg.table_lr / cfg.lr, "weight_decay": 0.0})
    return groups


def lr_at(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)


def _sample(lengths: torch.Tensor, step: int, cfg: TrainConfig, g: torch.Generator) -> list[int]:
    """A batch of training indices; under the length curriculum only texts up to the current length."""
    if cfg.curriculum > 0:
        cap = 4 + (cfg.max_tokens - 4) * min(1.0, step / cfg.curriculum)
        pool = torch.nonzero(lengths <= cap).flatten()
        if len(pool) < cfg.batch_size:
            pool = torch.argsort(lengths)[: cfg.batch_size]
    else:
        pool = torch.arange(len(lengths))
    pick = torch.randint(len(pool), (min(cfg.batch_size, len(lengths)),), generator=g)
    return pool[pick].tolist()


def _word_after(tok, prev: int, i: int) -> str | None:
    """The text token i adds after token prev when it starts a new word (a space between them), else None."""
    head, both = tok.decode([prev]), tok.decode([prev, i])
    return both[len(head) + 1:] if both.startswith(head + " ") else None


def novel_token_pool(llm: FrozenLLM, token_ids: list[list[int]]) -> list[int]:
    """Ids of the word-start tokens (a space, then 2+ letters) that no training target holds."""
    seen = {t for x in token_ids for t in x}
    tok, ref = llm.tokenizer, token_ids[0][0]
    special = set(tok.all_special_ids)
    pool = [i for i in range(len(tok)) if i not in seen and i not in special
            and len(w := _word_after(tok, ref, i) or "") >= 2 and w.isalpha()]
    if not pool:
        raise NarError("--novel-tokens: this tokenizer has no word-start token outside the training targets")
    return pool


def with_novel_tokens(batch: Pairs, rate: float, pool: list[int], llm: FrozenLLM, max_tokens: int,
                      seed: int) -> Pairs:
    """`TrainConfig.novel_tokens`: in a `rate` share of the batch's texts one word-start token after the first
    is replaced by a random token of `pool`; source and target become the new text (re-tokenised; a text that
    would outgrow max_tokens is left as it was). Seeded by `seed` alone, so a resumed run draws the same."""
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


GROWABLE = (("token_table",), ("unk_below", "unk_mode"))
"""Encoder options `--init-from` may switch on over a checkpoint without them (`init_from`)."""


def init_from(cfg: TrainConfig, enc_cfg: EncoderConfig, llm: FrozenLLM, layout: Layout
              ) -> tuple[EncoderConfig, Encoder | None]:
    """The encoder options of a run and, with --init-from, the checkpoint to start from (checked against this
    run's LLM and layout): its options replace the defaults, and options given besides them must agree."""
    if not cfg.init_from:
        return enc_cfg, None
    base = Encoder.from_pretrained(cfg.init_from, llm=llm)
    theirs, default = base.cfg.to_dict(), EncoderConfig().to_dict()
    # parts that start at zero may be added to a checkpoint without them (GROWABLE: each group's first option
    # switches it on): a per-token table (the encoder starts as the checkpoint's), the unknown-token vector (the
    # rare tokens' inputs change from the first step)
    mine = enc_cfg.to_dict()
    grow = {k: mine[k] for group in GROWABLE if mine[group[0]] and not theirs[group[0]] for k in group}
    clash = sorted(k for k, v in enc_cfg.to_dict().items() if v != default[k] and v != theirs[k] and k not in grow)
    if clash:
        raise NarError(f"--init-from {cfg.init_from} fixes the encoder options; these differ from it: "
                       + ", ".join(f"{k}={getattr(enc_cfg, k)!r} (checkpoint: {theirs[k]!r})" for k in clash))
    if replace(base.layout, rows=layout.rows) != layout:  # the rows' attention may change, the input may not
        raise NarError(f"--init-from {cfg.init_from}: trained with layout {base.layout.to_dict()}, this run uses "
                       f"{layout.to_dict()}")
    return base.cfg.replace(**grow), base


def train_encoder(data: str | Path, cfg: TrainConfig, enc_cfg: EncoderConfig, *, llm: FrozenLLM,
                  show_progress: bool = True) -> dict:
    """The training loop: eval, save, step, log. Returns the final held-out figures, with the trained
    encoder under "encoder"."""
    from rich.progress import Progress

    from nar.evaluate import evaluate_encoder
    from nar.monitor import TensorBoardWriter

    cfg = cfg.replace(precision=llm.precision(cfg.precision))  # the checkpoint records what ran, not 'auto'
    layout, stop_at_eos = run_layout(llm, data)
    layout = replace(layout, rows=cfg.rows)
    enc_cfg, base = init_from(cfg, enc_cfg, llm, layout)
    stop_at_eos = stop_at_eos or cfg.append_eos
    if enc_cfg.ctc_slots and enc_cfg.ctc_blank < 0:
        enc_cfg = enc_cfg.replace(ctc_blank=ctc_blank_id(llm))
    train, val = train_val_splits(data, llm, cfg)
    val_probe = val.take(list(range(min(cfg.val_limit, len(val)))))
    run = Path(cfg.run_dir)
    torch.manual_seed(cfg.seed)
    reader = make_reader(enc_cfg, llm)
    meta = {"llm": llm_record(llm), "reader": reader_info(enc_cfg, reader, llm),
            "layout": layout.to_dict(), "stop_at_eos": stop_at_eos,
            "data": {"train": str(data), "val": cfg.val_data, "train_texts": len(train), "val_texts": len(val),
                     "stats": train.stats, "val_ids": [] if cfg.val_data else val.ids},
            "train_config": cfg.to_dict()}
    enc = Encoder(enc_cfg, reader, llm.hidden_size, meta).to(llm.device)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    means = (train.e.mean(0), train.m.mean(0)) if train.e is not None else (emb.mean(0), emb.mean(0))
    enc.init_outputs(*means)
    if base is not None:  # what the checkpoint lacks (a grown token table) keeps this encoder's own start
        enc.load_state_tensors({**enc.state_tensors(), **base.state_tensors()})
    if enc_cfg.unk_below:  # this run's sources decide which tokens are known (a resumed run: the same ones)
        meta["data"]["unknown_tokens"] = enc.mark_known(train.sources)  # distinct training tokens read as unknown
    if base is None and enc_cfg.init_spread > 0 and not cfg.resume:
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:64].tolist()
        enc.spread_outputs(train.take(sample).sources, *means, enc_cfg.init_spread * float(emb.norm(dim=-1).mean()))
    params = enc.trainable_parameters()
    opt = torch.optim.AdamW(param_groups(enc, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    start, best = 0, -1.0
    if cfg.resume:
        start, best = _resume(run / "last", enc, opt, g)
    lengths = torch.tensor([len(x) for x in train.token_ids])
    bias = None
    for flag, on in (("--logit-adjust", cfg.logit_adjust > 0), ("--after-error-weight", cfg.after_error_weight != 1)):
        if on and enc_cfg.ctc_slots:
            raise NarError(f"{flag} applies to the position-wise cross-entropy, not to CTC (--ctc-slots)")
    if cfg.w_state > 0:
        depth = llm.model.config.num_hidden_layers
        for why, bad in (("the position-wise cross-entropy, not CTC (--ctc-slots)", enc_cfg.ctc_slots),
                         ("Paper A's layout, not an in-context one (--context)", enc_cfg.context != "none"),
                         (f"blocks 1..{depth} of this LLM (--state-layers)", max(cfg.state_layers) > depth),
                         ("a loss with the cross-entropy on (--w-ce > 0)", cfg.w_ce <= 0),
                         ("a layout with a prefix (the row that writes the first token)", not layout.prefix_ids)):
            if bad:
                raise NarError(f"--w-state applies to {why}")
    pool = None
    if cfg.novel_tokens > 0:
        if any(s != t for s, t in zip(train.sources, train.targets)) or cfg.append_eos:
            raise NarError("--novel-tokens is an autoencoding augmentation: every training source must be its "
                           "own target (and no EOS appended)")
        if train.e is not None and cfg.w_reg > 0:
            raise NarError("--novel-tokens changes texts whose fitted proto-tokens are regression targets: use "
                           "it with a text file, or with --w-reg 0")
        pool = novel_token_pool(llm, train.token_ids)
    if cfg.logit_adjust > 0:
        vocab = llm.model.get_output_embeddings().weight.shape[0]
        bias = token_prior_bias(train.token_ids, vocab, cfg.logit_adjust).to(llm.device)
    tb = TensorBoardWriter(run / "tb")
    last_val: dict = {}
    t0 = time.perf_counter()

    def validate(step: int) -> None:
        nonlocal last_val, best
        last_val = evaluate_encoder(enc, llm, val_probe, layout, cfg.precision, stop_at_eos)
        for k in ("token_acc", "exact_match", "distinct_share"):
            tb.scalar(f"encoder/val_{k}", last_val[k], step)
        if last_val["token_acc"] > best:
            best = last_val["token_acc"]
            enc.save_pretrained(run / "best", {"train_state": {"step": step, "val": last_val}})

    with Progress(disable=not show_progress) as prog:
        task = prog.add_task("train-encoder", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            if step % cfg.val_every == 0:
                validate(step)
            if step > start and step % cfg.save_every == 0:
                _save_last(run / "last", enc, opt, g, step, best)
            batch = train.take(_sample(lengths, step, cfg, g))
            if pool is not None:
                batch = with_novel_tokens(batch, cfg.novel_tokens, pool, llm, cfg.max_tokens,
                                          cfg.seed * 1_000_003 + step)
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, cfg) * pg.get("lr_scale", 1.0)
            parts = train_step(enc, llm, batch, layout, cfg, opt, params, bias)
            for k, v in parts.items():
                tb.scalar(f"encoder/loss_{k}", float(v.detach()), step)
            tb.scalar("encoder/lr", lr_at(step, cfg), step)
            prog.update(task, advance=1, description=f"train-encoder loss {float(parts['total'].detach()):.3f} "
                                                     f"val acc {last_val.get('token_acc', 0):.3f}")
        validate(cfg.steps)
        _save_last(run / "last", enc, opt, g, cfg.steps, best)
    tb.close()
    return {"run_dir": str(run), "steps": cfg.steps, "train_texts": len(train), "val_texts": len(val),
            "data": train.stats, "val": last_val, "best_val_token_acc": best,
            "seconds": round(time.perf_counter() - t0, 1), "encoder": enc}


def _save_last(path: Path, enc: Encoder, opt, g: torch.Generator, step: int, best: float) -> None:
    """Weights, optimizer and RNG states (torch's global one drives dropout; `g` draws the batches), as one
    atomic folder: a crash while saving leaves the previous checkpoint whole."""
    from safetensors.torch import save_file

    rng = {"torch": torch.get_rng_state(), "batches": g.get_state()}

    def write(tmp: Path) -> None:
        enc.write_files(tmp, {"train_state": {"step": step, "best": best}})
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        save_file(rng, str(tmp / "rng.safetensors"))

    atomic_dir(path, write)


def _resume(path: Path, enc: Encoder, opt, g: torch.Generator) -> tuple[int, float]:
    from safetensors.torch import load_file

    recover_dir(path)
    need = ("config.json", "model.safetensors", "optimizer.pt", "rng.safetensors")
    missing = [f for f in need if not (path / f).is_file()]
    if missing:
        raise NarError(f"cannot resume from {path}: missing {', '.join(missing)}")
    state = read_json(path / "config.json", "an encoder checkpoint")["train_state"]
    enc.load_state_tensors(load_file(str(path / "model.safetensors")))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    g.set_state(rng["batches"])
    return int(state["step"]), float(state["best"])
