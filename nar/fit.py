"""The proto-token optimiser (Paper A): fit (e, m) so that one forward pass reproduces a text.

Texts are fitted in a fixed number of *slots* that form one padded batch. Every slot has its own
e and m, its own AdamW state and step count, and stops on its own when it reaches
the target accuracy or the step cap; the slot is then refilled with the next text (continuous
batching). The loss is the *sum* over slots of each text's mean cross-entropy, so a text's gradient
does not depend on which other texts share the batch: fitting in a batch gives the same vectors as
fitting alone (up to float rounding), unless an extra cross-text loss is passed in.

The loss is `nar.losses.reconstruction_loss` and the schedule `nar.schedule.warmup_cosine`, the same
ones encoder training uses. This module knows nothing about files; `nar.corpus` and the CLI store what
it yields.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from nar.config import FitConfig
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout
from nar.losses import reconstruction_loss
from nar.schedule import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class FitItem:
    """One target to fit. `key` must be unique in a run; it also seeds the text's initial vectors."""

    key: str
    ids: list[int]
    payload: dict = field(default_factory=dict)
    """Anything the caller wants back with the result (source text, teacher embedding, ...)."""
    init_key: str | None = None
    """Seeds the initial vectors instead of `key` (e.g. the text itself, so order does not matter)."""
    init_e: torch.Tensor | None = None
    """Start e here instead of at random (teacher-aligned init, warm starts). (D,)"""
    init_m: torch.Tensor | None = None
    """Start m here instead of at random. (D,)"""

    @property
    def seed_key(self) -> str:
        return self.key if self.init_key is None else self.init_key


@dataclass
class FitResult:
    """The best vectors seen for one text, and how the fit went."""

    key: str
    e: torch.Tensor  # (D,) float32, cpu
    m: torch.Tensor  # (D,) float32, cpu
    token_ids: list[int]
    accuracy: float
    steps: int
    loss: float
    seconds: float
    converged: bool
    failed: bool = False
    payload: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class StepStats:
    """Numbers from one optimiser step, for progress bars and TensorBoard."""

    step: int
    active: int
    loss: float
    token_acc: float
    extra: dict[str, float]


ExtraLoss = Callable[[torch.Tensor, torch.Tensor, list[FitItem]], dict[str, torch.Tensor]]
"""(E (B, D), M (B, D), items of the B active slots) -> named scalar losses, already weighted."""
PinE = Callable[[torch.Tensor, list[FitItem]], torch.Tensor]
"""(E (B, D), items) -> E projected onto the allowed set (e.g. `nar.losses.FramePin`); applied to each text's
starting e and after every update."""


def init_vector(key: str, seed: int, dim: int, scale: float) -> torch.Tensor:
    """A text's initial vector: depends only on (seed, key), never on slot or batch order. (dim,)"""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return torch.randn(dim, generator=g) * scale


def lr_at(cfg: FitConfig, step: int) -> float:
    """The learning rate of a text's `step`-th update (0-based) under cfg's schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.max_steps)


def initial_vectors(llm: FrozenLLM, item: FitItem, cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, m) a text starts from: the item's own init_e/init_m where given, else cfg.init. Both (D,)."""
    dim = llm.hidden_size
    scale = llm.embed_std if cfg.init in ("embed_std", "tokens", "teacher") else 1.0
    key = "shared" if cfg.init_noise == "shared" else item.seed_key
    e = init_vector(key + "/e", cfg.seed, dim, scale)
    m = init_vector(key + "/m", cfg.seed, dim, scale)
    if cfg.init == "tokens":
        with torch.no_grad():
            mean = llm.model.get_input_embeddings()(torch.tensor(item.ids, device=llm.device)).float().mean(0).cpu()
        e, m = mean + e, mean + m
    return (item.init_e if item.init_e is not None else e), (item.init_m if item.init_m is not None else m)


def fp32_checked(llm: FrozenLLM, E: torch.Tensor, M: torch.Tensor, targets: list, layout: Layout, cfg: FitConfig,
                 acc: torch.Tensor) -> torch.Tensor:
    """Under bf16 with cfg.verify_fp32: the texts whose accuracy `acc` (B,) reached cfg.target_acc get the worse
    of it and an fp32 pass's (with cfg.margin); the others keep theirs. E (B, D); M (B, D) or shared (1, D)."""
    if llm.precision(cfg.precision) != "bf16" or not cfg.verify_fp32:
        return acc
    hit = [j for j in range(len(acc)) if float(acc[j]) >= cfg.target_acc]
    if not hit:
        return acc
    with torch.no_grad():
        acc32 = reconstruction_loss(llm, E[hit].detach(), (M if M.shape[0] == 1 else M[hit]).detach(),
                                    [targets[j] for j in hit], layout, "fp32", margin=cfg.margin).acc.cpu()
    acc = acc.clone()
    acc[hit] = torch.minimum(acc[hit], acc32)
    return acc


def make_layout(llm: FrozenLLM, cfg: FitConfig) -> Layout:
    return Layout(prefix_ids=llm.resolve_prefix(cfg.prefix), first=cfg.first)


@dataclass
class _Slot:
    item: FitItem
    targets: torch.Tensor  # (N,) long
    started: float
    steps: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_e: torch.Tensor | None = None
    best_m: torch.Tensor | None = None
    last_loss: float = math.inf


def _opt_state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(p, {}).items()}


def slot_state(s: _Slot, e: torch.Tensor, m: torch.Tensor, opt: torch.optim.Optimizer) -> dict:
    """Everything a text's fit needs to go on later exactly where it is: its vectors, their AdamW moments,
    its step count and the best state seen so far (all on the CPU, `torch.save`-able)."""
    return {"e": e.detach().cpu().clone(), "m": m.detach().cpu().clone(),
            "opt": [_opt_state(opt, e), _opt_state(opt, m)], "steps": s.steps, "best_acc": s.best_acc,
            "best_loss": s.best_loss, "best_e": s.best_e, "best_m": s.best_m, "last_loss": s.last_loss,
            "seconds": time.perf_counter() - s.started}


def fit_stream(llm: FrozenLLM, items: Iterable[FitItem], cfg: FitConfig, *,
               extra_loss: ExtraLoss | None = None, pin_e: PinE | None = None,
               on_step: Callable[[StepStats], None] | None = None,
               resume: Mapping[str, dict] | None = None,
               on_snapshot: Callable[[dict[str, dict]], None] | None = None,
               snapshot_every: int = 50) -> Iterator[FitResult]:
    """Fit every item; yield each result as soon as its slot finishes (not in input order). With pin_e, e is
    projected by it at the start and after every update (a constraint rather than a loss).

    Long fits survive a stop: every `snapshot_every` batch steps, on_snapshot gets {item key: `slot_state`} of
    the texts still fitting; an item whose key is in `resume` (such a dict, from an earlier run) goes on from
    that state instead of its start, so the stopped and resumed fit makes the same updates as one run."""
    layout = make_layout(llm, cfg)
    dev, dim = llm.device, llm.hidden_size
    n_slots = cfg.num_slots
    e_params = [torch.zeros(dim, device=dev, requires_grad=True) for _ in range(n_slots)]
    m_params = [torch.zeros(dim, device=dev, requires_grad=True) for _ in range(n_slots)]
    # One param group per slot: each slot keeps its own step count, so bias correction restarts
    # when a slot is refilled (its state is dropped), exactly as for a fresh single-text optimiser.
    opt = torch.optim.AdamW([{"params": [e_params[i], m_params[i]]} for i in range(n_slots)],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    slots: list[_Slot | None] = [None] * n_slots
    if cfg.sort_by_length:  # longest first; stable: equal lengths keep their input order
        items = sorted(items, key=lambda it: -len(it.ids))
    if resume:  # texts stopped mid-fit go on first, so they do not wait behind texts not yet started
        items = sorted(items, key=lambda it: it.key not in resume)
    pending = iter(items)

    def fill(i: int) -> bool:
        item = next(pending, None)
        if item is None:
            slots[i] = None
            return False
        saved = (resume or {}).get(item.key)
        if saved is not None:
            e0, m0 = saved["e"], saved["m"]
        else:
            e0, m0 = initial_vectors(llm, item, cfg)
            if pin_e is not None:
                e0 = pin_e(e0[None].to(dev), [item])[0]
        with torch.no_grad():
            e_params[i].copy_(e0)
            m_params[i].copy_(m0)
        for j, p in enumerate((e_params[i], m_params[i])):
            opt.state.pop(p, None)
            p.grad = None
            if saved is not None and saved["opt"][j]:
                opt.state[p] = {k: (v.clone() if k == "step" else v.to(dev, copy=True)) if torch.is_tensor(v) else v
                                for k, v in saved["opt"][j].items()}
        slots[i] = _Slot(item, torch.tensor(item.ids, dtype=torch.long, device=dev), time.perf_counter())
        if saved is not None:
            for k in ("steps", "best_acc", "best_loss", "best_e", "best_m", "last_loss"):
                setattr(slots[i], k, saved[k])
            slots[i].started -= saved["seconds"]
        return True

    for i in range(n_slots):
        fill(i)
    step = 0
    while True:
        act = [i for i, s in enumerate(slots) if s is not None]
        if not act:
            return
        if on_snapshot is not None and step and step % snapshot_every == 0:
            on_snapshot({slots[i].item.key: slot_state(slots[i], e_params[i], m_params[i], opt) for i in act})
        E = torch.stack([e_params[i] for i in act])
        M = torch.stack([m_params[i] for i in act])
        own_margin = cfg.margin if llm.precision(cfg.precision) == "fp32" or not cfg.verify_fp32 else 0.0
        rec = reconstruction_loss(llm, E, M, [slots[i].targets for i in act], layout, cfg.precision,
                                  margin=own_margin)
        ce, acc = rec.ce, rec.acc
        ce_now = ce.detach().cpu()
        acc_now = acc.cpu().clone()
        finite = torch.isfinite(ce)
        acc_now[~finite.cpu()] = 0.0  # a non-finite text fails below whatever its accuracy; never checked
        acc_now = fp32_checked(llm, E, M, [slots[i].targets for i in act], layout, cfg, acc_now)
        loss = torch.where(finite, ce, torch.zeros_like(ce)).sum()
        extras = extra_loss(E, M, [slots[i].item for i in act]) if extra_loss else {}
        for v in extras.values():
            loss = loss + v
        done = []
        for j, i in enumerate(act):
            s = slots[i]
            a, c = float(acc_now[j]), float(ce_now[j])
            s.last_loss = c
            if not math.isfinite(c):
                done.append((i, True))
                continue
            if a > s.best_acc or (a == s.best_acc and c < s.best_loss):
                s.best_acc, s.best_loss = a, c
                s.best_e, s.best_m = E[j].detach().cpu().clone(), M[j].detach().cpu().clone()
            if a >= cfg.target_acc or s.steps >= cfg.max_steps:
                done.append((i, False))
        if on_step:
            on_step(StepStats(step, len(act), float(loss.detach()), float(acc.mean()),
                              {k: float(v.detach()) for k, v in extras.items()}))
        finished = {i for i, _ in done}
        opt.zero_grad(set_to_none=True)
        if len(finished) < len(act):
            if torch.isfinite(loss):
                loss.backward()
                for i in finished:  # their vectors are already recorded; keep the step from moving them
                    e_params[i].grad = m_params[i].grad = None
                if not cfg.train_e:  # no gradient, no weight decay: e stays at its start
                    for i in act:
                        e_params[i].grad = None
                for i in act:
                    opt.param_groups[i]["lr"] = lr_at(cfg, slots[i].steps)
                opt.step()
                moved = [i for i in act if i not in finished]
                if pin_e is not None and moved:
                    with torch.no_grad():
                        pinned = pin_e(torch.stack([e_params[i] for i in moved]), [slots[i].item for i in moved])
                        for i, e in zip(moved, pinned):
                            e_params[i].copy_(e)
            else:  # a cross-text term blew up: no single text is to blame, so skip this update
                log.warning("non-finite extra loss at step %d (%s); update skipped", step, list(extras))
            for i in act:
                if i not in finished:
                    slots[i].steps += 1
        step += 1
        for i, failed in done:
            yield _result(slots[i], cfg, failed, dim)
            fill(i)


def _result(s: _Slot, cfg: FitConfig, failed: bool, dim: int) -> FitResult:
    nan = torch.full((dim,), float("nan"))  # a text that failed at its first step has no vectors: NaN (D,)
    return FitResult(
        key=s.item.key,
        e=s.best_e if s.best_e is not None else nan,
        m=s.best_m if s.best_m is not None else nan,
        token_ids=list(s.item.ids),
        accuracy=max(s.best_acc, 0.0),
        steps=s.steps,
        loss=s.best_loss if s.best_e is not None else s.last_loss,
        seconds=time.perf_counter() - s.started,
        converged=(not failed) and s.best_acc >= cfg.target_acc,
        failed=failed,
        payload=s.item.payload,
    )


def target_ids(llm: FrozenLLM, text: str, cfg: FitConfig) -> list[int]:
    """A target's token ids: the text's tokens, and EOS after them with cfg.append_eos."""
    ids = llm.encode(text)
    if cfg.append_eos:
        if llm.eos_id is None:
            raise NarError(f"model {llm.name} has no EOS token; drop --append-eos")
        ids = ids + [llm.eos_id]
    return ids


def prepare_ids(llm: FrozenLLM, text: str, cfg: FitConfig) -> list[int]:
    """`target_ids`, refusing an empty text and one over cfg.max_tokens (what every caller that cannot
    skip a text needs; build-corpus skips or truncates instead)."""
    if not text or not text.strip():
        raise NarError("empty text: nothing to reconstruct")
    ids = target_ids(llm, text, cfg)
    if len(ids) > cfg.max_tokens:
        raise NarError(f"text is {len(ids)} tokens, over --max-tokens {cfg.max_tokens}: {text[:60]!r}...")
    return ids


def fit_texts(llm: FrozenLLM, texts: list[str], cfg: FitConfig, *,
              on_step: Callable[[StepStats], None] | None = None,
              on_result: Callable[[FitResult], None] | None = None) -> list[FitResult]:
    """Fit a list of texts; results in input order. Raises NarError on empty or over-long texts."""
    items = [FitItem(key=str(i), ids=prepare_ids(llm, t, cfg), payload={"text": t}, init_key=t)
             for i, t in enumerate(texts)]
    by_key = {}
    for r in fit_stream(llm, items, cfg, on_step=on_step):
        by_key[r.key] = r
        if on_result:
            on_result(r)
    return [by_key[it.key] for it in items]
