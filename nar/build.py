"""The build-corpus job: read texts, embed them with the teacher, fit proto-tokens in the corpus frame, store
them resumably (`nar.corpus`), one or several workers."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nar import __version__, faults
from nar import corpus as corpus_store
from nar.artifacts import folder_lock
from nar.config import CORPUS_FIT, BuildConfig, FitConfig
from nar.data import read_rows
from nar.fit import FitItem, FitResult, fit_stream, make_layout, target_ids
from nar.frame import corpus_frame, encoder_init, neighbour_init
from nar.llm import FrozenLLM, load_llm
from nar.monitor import FitProgress, NullWriter, TensorBoardWriter
from nar.space import proto_space
from nar.teacher import Teacher, load_teacher

log = logging.getLogger(__name__)


def build_corpus(bcfg: BuildConfig, fcfg: FitConfig = CORPUS_FIT, *, llm: FrozenLLM | None = None,
                 teacher: Teacher | None = None, show_progress: bool = True,
                 barrier: Callable[[], None] = lambda: None) -> dict:
    """Fit every pending row of the input into the corpus at `bcfg.out`; returns this worker's summary.

    `fcfg` defaults to `nar.config.CORPUS_FIT` (e starts in the teacher frame, targets up to 32 tokens),
    the defaults of `nar build-corpus`. With several workers (bcfg.rank / bcfg.world_size), each takes the
    rows with index % world_size == rank and writes its own shards; `barrier` (e.g. accelerate's
    `wait_for_everyone`) orders the steps that must not overlap: rank 0 creates the corpus before the
    others open it, and merges every worker's summary into the manifest after all have finished.
    """
    t_start = time.perf_counter()
    rows, rstats = read_rows(bcfg)
    llm = llm or load_llm(bcfg.model, device=bcfg.device)
    teacher = teacher or load_teacher(bcfg.teacher)
    fcfg = fcfg.replace(precision=llm.precision(fcfg.precision))  # the manifest records what ran, not 'auto'
    # one build per worker slot at a time: a second `build-corpus` on the same folder is refused, not run twice
    with folder_lock(bcfg.out, f"build-r{bcfg.rank:03d}", "build-corpus"):
        return _build(bcfg, fcfg, rows, rstats, llm, teacher, show_progress, barrier, t_start)


def _build(bcfg: BuildConfig, fcfg: FitConfig, rows, rstats, llm: FrozenLLM, teacher: Teacher, show_progress: bool,
           barrier: Callable[[], None], t_start: float) -> dict:
    out = Path(bcfg.out)

    def open_corpus() -> None:
        corpus_store.open_corpus(out, llm, teacher, make_layout(llm, fcfg).to_dict(), fcfg.to_dict(), bcfg.to_dict())

    if bcfg.rank == 0:  # rank 0 creates the corpus, then the others open it
        open_corpus()
    barrier()
    if bcfg.rank != 0:
        open_corpus()
    done = corpus_store.done_ids(out)
    counts = {"input_rows": rstats.rows, "other_ranks": rstats.other_ranks, "skipped_empty": rstats.skipped_empty,
              "skipped_missing": rstats.skipped_missing,
              "skipped_duplicate": rstats.skipped_duplicate, "already_done": 0, "skipped_long": 0, "truncated": 0}
    todo = []
    for r in rows:
        if r.id in done:
            counts["already_done"] += 1
            continue
        ids, target = target_ids(llm, r.target, fcfg), r.target
        if not ids:
            counts["skipped_empty"] += 1
            continue
        if len(ids) > fcfg.max_tokens:
            if bcfg.on_long == "skip":
                counts["skipped_long"] += 1
                continue
            ids = ids[: fcfg.max_tokens]
            target = llm.tokenizer.decode(ids, skip_special_tokens=True)
            counts["truncated"] += 1
        todo.append((r, ids, target))

    T = teacher.encode([t for _, _, t in todo]) if todo else torch.zeros(0, teacher.dim)
    frame = corpus_frame(out, llm, teacher, fcfg, bcfg)
    items = [FitItem(key=r.id, ids=ids, init_e=frame.init_e(t),
                     payload={"source": r.source, "target": target, "teacher": t})
             for (r, ids, target), t in zip(todo, T)]
    _warm_start(items, bcfg, fcfg, llm, T, [r.source or t for (r, _, t) in todo])
    writer = corpus_store.ShardWriter(out, llm.hidden_size, teacher.dim, rank=bcfg.rank)
    log_dir = Path(bcfg.log_dir or out / "tb")
    if bcfg.world_size > 1:
        log_dir = log_dir / f"rank{bcfg.rank}"
    tb = TensorBoardWriter(log_dir) if items else NullWriter()
    results: list[FitResult] = []
    t_fit = time.perf_counter()
    try:
        with FitProgress(len(items), "build-corpus", enabled=show_progress, writer=tb) as prog:
            for res in fit_stream(llm, items, fcfg, extra_loss=frame.loss, pin_e=frame.pin,
                                  on_step=prog.on_step):
                writer.write([corpus_store.result_row(res, bcfg.rank)])  # durable before the slot is reused
                faults.point("fit.written")
                if not res.failed:
                    frame.bank.add(proto_space(res.e[None], res.m[None], bcfg.rd_target)[0], res.payload["teacher"])
                res.e = res.m = None  # keep only the figures in memory
                results.append(res)
                prog.on_result(res)
    finally:
        tb.close()
    fit_seconds = time.perf_counter() - t_fit
    run = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "rank": bcfg.rank, "world_size": bcfg.world_size,
        "input": bcfg.input, "nar_version": __version__, "fit_config": fcfg.to_dict(),
        "build_config": bcfg.to_dict(), **counts,
        "fitted": len(results), "converged": sum(r.converged for r in results),
        "failed": sum(r.failed for r in results),
        "median_steps": statistics.median(r.steps for r in results) if results else None,
        "mean_accuracy": round(sum(r.accuracy for r in results) / len(results), 4) if results else None,
        "fit_seconds": round(fit_seconds, 1),
        "texts_per_hour": round(3600 * len(results) / fit_seconds, 1) if results else None,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    corpus_store.write_run(out, run)
    barrier()
    if bcfg.rank == 0:
        corpus_store.merge(out, bcfg.shard_size)
    return run


def _warm_start(items: list[FitItem], bcfg: BuildConfig, fcfg: FitConfig, llm: FrozenLLM, T: torch.Tensor,
                sources: list[str]) -> None:
    """Start each item at its nearest corpus row or at an encoder's prediction (bcfg.warm_start)."""
    warm = None
    if bcfg.warm_start == "neighbour" and items:
        warm = neighbour_init(bcfg.out, T)
        if warm is None:
            log.warning("--warm-start neighbour: the corpus has no rows yet; starting from --init %s", fcfg.init)
    elif bcfg.warm_start == "encoder" and items:
        warm = encoder_init(bcfg.warm_start_encoder, llm, fcfg, sources)
    if warm is not None:
        for it, e0, m0 in zip(items, *warm):
            it.init_e, it.init_m = e0, m0


def distributed_context(device: str = "auto") -> tuple[int, int, str, Callable[[], None]]:
    """(rank, world_size, device, barrier). Under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) these
    come from accelerate's PartialState (NCCL on GPUs, gloo on CPUs); otherwise a single worker."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))
    return state.process_index, state.num_processes, str(state.device), state.wait_for_everyone

