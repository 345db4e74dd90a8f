"""The build-corpus job: read texts, embed them with the teacher, fit proto-tokens, store them resumably."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from nar import __version__
from nar.config import BuildConfig, FitConfig
from nar.corpus import ShardWriter, done_ids, read_manifest, read_table, write_manifest
from nar.data import read_rows
from nar.errors import NarError
from nar.fit import FitItem, FitResult, fit_stream, make_layout
from nar.llm import FrozenLLM, frozen_llm_info, load_llm
from nar.losses import MemoryBank, TeacherRegulariser, proto_view, teacher_projection
from nar.monitor import FitProgress, NullWriter, TensorBoardWriter
from nar.teacher import Teacher, load_teacher

log = logging.getLogger(__name__)


def open_corpus(out: Path, llm: FrozenLLM, teacher: Teacher, fcfg: FitConfig, bcfg: BuildConfig) -> dict:
    """Create the corpus folder, or check that an existing one was made with the same models and layout."""
    layout = make_layout(llm, fcfg).to_dict()
    if (out / "manifest.json").is_file():
        man = read_manifest(out)
        if man["llm"]["fingerprint"] != llm.fingerprint:
            raise NarError(f"{out} was built with LLM {man['llm']['fingerprint']}, not {llm.fingerprint}; "
                           "use another --out folder")
        if man["teacher"]["fingerprint"] != teacher.fingerprint:
            raise NarError(f"{out} was built with teacher {man['teacher']['fingerprint']}, not "
                           f"{teacher.fingerprint}; use another --out folder")
        if man.get("layout") != layout:
            raise NarError(f"{out} uses layout {man.get('layout')}, this run {layout} (--prefix/--first differ)")
        changed = {k: (man["fit_config"].get(k), v) for k, v in fcfg.to_dict().items()
                   if man["fit_config"].get(k) != v}
        if changed:
            log.warning("resuming %s with different fit options %s; each run's options are kept in the manifest",
                        out, changed)
        return man
    if out.exists() and any(out.iterdir()):
        raise NarError(f"{out} exists, is not empty and holds no nar corpus; choose another --out")
    man = {"llm": frozen_llm_info(llm),
           "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint, "dim": teacher.dim},
           "layout": layout, "fit_config": fcfg.to_dict(), "build_config": bcfg.to_dict(), "runs": [],
           "counts": {}}
    write_manifest(out, man)
    return man


def _row(r: FitResult, rank: int) -> dict:
    p = r.payload
    return {"id": r.key, "source": p["source"], "target": p["target"], "token_ids": r.token_ids,
            "n_tokens": r.n_tokens, "e": r.e.tolist(), "m": r.m.tolist(), "accuracy": r.accuracy,
            "steps": r.steps, "loss": r.loss, "seconds": r.seconds, "converged": r.converged,
            "failed": r.failed, "teacher": p["teacher"].tolist(), "rank": rank}


def _seed_bank(out: Path, bank: MemoryBank, rd_target: str) -> None:
    """Start the memory bank from the corpus already written, so a resumed run keeps the same frame."""
    if bank.size == 0:
        return
    table = read_table(out, ["e", "m", "teacher", "failed"])
    n = table.num_rows
    for i in range(max(0, n - bank.size), n):
        if table.column("failed")[i].as_py():
            continue
        e = torch.tensor(table.column("e")[i].as_py())[None]
        m = torch.tensor(table.column("m")[i].as_py())[None]
        bank.add(proto_view(e, m, rd_target)[0], torch.tensor(table.column("teacher")[i].as_py()))


def neighbour_init(out: Path, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Warm start: for each teacher vector in T (B, d), the (e, m) of the nearest written row in teacher
    space (cosine), as two (B, D) tensors; None when the corpus has no usable row yet."""
    from nar.index import corpus_vectors, make_faiss_index

    if len(T) == 0 or read_table(out, ["id"]).num_rows == 0:
        return None
    _, x, cols = corpus_vectors(out, "teacher")  # non-failed rows, L2-normalised teacher vectors
    if len(x) == 0:
        return None
    _, nn = make_faiss_index(x, "flat").search(F.normalize(T.float(), dim=1).numpy(), 1)
    nn = torch.from_numpy(nn[:, 0])
    return torch.from_numpy(cols["e"])[nn], torch.from_numpy(cols["m"])[nn]


def encoder_init(path: str | Path, llm: FrozenLLM, fcfg: FitConfig,
                 sources: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm start: the (e, m) an encoder checkpoint predicts for each source, as two (B, D) tensors.
    The encoder must have been trained for this LLM and for the layout this fit uses."""
    from nar.encoder import Encoder

    enc = Encoder.from_pretrained(path, llm=llm)
    layout = make_layout(llm, fcfg)
    if enc.cfg.n_e != 1 or enc.cfg.pos_codes:
        raise NarError(f"encoder {path} emits {enc.cfg.n_e} e-vectors{' and position codes' * enc.cfg.pos_codes}; "
                       "a warm start needs Paper A's layout (one e, plain m copies)")
    if enc.layout != layout:
        raise NarError(f"encoder {path} predicts for layout {enc.layout.to_dict()}, this fit uses {layout.to_dict()}")
    e, m, _ = enc.predict(sources)
    return e, m


def build_corpus(bcfg: BuildConfig, fcfg: FitConfig, *, llm: FrozenLLM | None = None,
                 teacher: Teacher | None = None, show_progress: bool = True,
                 barrier: Callable[[], None] = lambda: None) -> dict:
    """Fit every pending row of the input into the corpus at `bcfg.out`; returns this worker's summary.

    With several workers (bcfg.rank / bcfg.world_size), each takes the rows with index % world_size ==
    rank and writes its own shards; `barrier` (e.g. accelerate's `wait_for_everyone`) orders the steps
    that must not overlap: rank 0 creates the corpus before the others open it, and merges every
    worker's summary into the manifest after all have finished.
    """
    t_start = time.perf_counter()
    if fcfg.share_m:
        raise NarError("build-corpus fits per-text m (a shared m cannot be resumed text by text)")
    rows, rstats = read_rows(bcfg)
    llm = llm or load_llm(bcfg.model, device=bcfg.device)
    teacher = teacher or load_teacher(bcfg.teacher)
    out = Path(bcfg.out)
    if bcfg.rank == 0:
        open_corpus(out, llm, teacher, fcfg, bcfg)
    barrier()
    if bcfg.rank != 0:
        open_corpus(out, llm, teacher, fcfg, bcfg)
    done = done_ids(out)
    counts = {"input_rows": rstats.rows, "other_ranks": rstats.other_ranks, "skipped_empty": rstats.skipped_empty,
              "skipped_duplicate": rstats.skipped_duplicate, "already_done": 0, "skipped_long": 0, "truncated": 0}
    todo = []
    for r in rows:
        if r.id in done:
            counts["already_done"] += 1
            continue
        ids = llm.encode(r.target)
        if fcfg.append_eos and llm.eos_id is not None:
            ids.append(llm.eos_id)
        if not ids:
            counts["skipped_empty"] += 1
            continue
        target = r.target
        if len(ids) > fcfg.max_tokens:
            if bcfg.on_long == "skip":
                counts["skipped_long"] += 1
                continue
            ids = ids[: fcfg.max_tokens]
            target = llm.tokenizer.decode(ids, skip_special_tokens=True)
            counts["truncated"] += 1
        todo.append((r, ids, target))

    T = teacher.encode([t for _, _, t in todo]) if todo else torch.zeros(0, teacher.dim)
    init_e, bank, reg = corpus_frame(out, llm, teacher, fcfg, bcfg)
    items = [FitItem(key=r.id, ids=ids, init_e=init_e(t), payload={"source": r.source, "target": target, "teacher": t})
             for (r, ids, target), t in zip(todo, T)]
    warm = None
    if bcfg.warm_start == "neighbour" and items:
        warm = neighbour_init(out, T)
        if warm is None:
            log.warning("--warm-start neighbour: the corpus has no rows yet; starting from --init %s", fcfg.init)
    elif bcfg.warm_start == "encoder" and items:
        warm = encoder_init(bcfg.warm_start_encoder, llm, fcfg, [r.source or t for (r, _, t) in todo])
    if warm is not None:
        for it, e0, m0 in zip(items, *warm):
            it.init_e, it.init_m = e0, m0
    writer = ShardWriter(out, llm.hidden_size, teacher.dim, rank=bcfg.rank)
    log_dir = Path(bcfg.log_dir or out / "tb")
    if bcfg.world_size > 1:
        log_dir = log_dir / f"rank{bcfg.rank}"
    tb = TensorBoardWriter(log_dir) if items else NullWriter()
    results: list[FitResult] = []
    t_fit = time.perf_counter()
    try:
        with FitProgress(len(items), "build-corpus", enabled=show_progress, writer=tb) as prog:
            for res in fit_stream(llm, items, fcfg, extra_loss=reg, on_step=prog.on_step):
                writer.write([_row(res, bcfg.rank)])  # durable before the slot is reused
                if not res.failed:
                    bank.add(proto_view(res.e[None], res.m[None], bcfg.rd_target)[0], res.payload["teacher"])
                res.e = res.m = None  # keep only the figures in memory
                results.append(res)
                prog.on_result(res)
    finally:
        tb.close()
    fit_seconds = time.perf_counter() - t_fit
    conv = [r for r in results if r.converged]
    run = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "rank": bcfg.rank, "world_size": bcfg.world_size,
        "input": bcfg.input, "nar_version": __version__, "fit_config": fcfg.to_dict(),
        "build_config": bcfg.to_dict(), **counts,
        "fitted": len(results), "converged": len(conv), "failed": sum(r.failed for r in results),
        "median_steps": statistics.median(r.steps for r in results) if results else None,
        "mean_accuracy": round(sum(r.accuracy for r in results) / len(results), 4) if results else None,
        "fit_seconds": round(fit_seconds, 1),
        "texts_per_hour": round(3600 * len(results) / fit_seconds, 1) if results else None,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    _write_run(out, run)
    barrier()
    if bcfg.rank == 0:
        merge(out, bcfg.shard_size)
    return run


def _write_run(out: Path, run: dict) -> None:
    """Each worker's summary of each run, as its own file (merged into the manifest by rank 0)."""
    import json

    from nar.corpus import atomic_write_bytes

    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-r{run['rank']:03d}.json"
    atomic_write_bytes(out / "runs" / name, json.dumps(run, indent=2).encode())


def merge(out: str | Path, shard_size: int = 1024) -> dict:
    """Compact every worker's small shards and rebuild the manifest's runs and counts from disk.

    Called by rank 0 at the end of every build; also `nar corpus-merge` after an interrupted
    multi-process run. Idempotent."""
    import json

    from nar.corpus import compact

    out = Path(out)
    man = read_manifest(out)
    ranks = sorted({int(f.name[1:4]) for f in (out / "shards").glob("r*.parquet")})
    for r in ranks:
        compact(out, shard_size, rank=r)
    runs = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))]
    total = read_table(out, ["converged", "rank"])
    per_rank: dict[int, int] = {}
    for r in total.column("rank").to_pylist():
        per_rank[r] = per_rank.get(r, 0) + 1
    man["runs"] = runs
    man["counts"] = {"rows": total.num_rows, "converged": sum(total.column("converged").to_pylist()),
                     "rows_per_rank": {str(k): v for k, v in sorted(per_rank.items())}}
    write_manifest(out, man)
    return man["counts"]


def corpus_frame(out: Path, llm: FrozenLLM, teacher: Teacher, fcfg: FitConfig, bcfg: BuildConfig):
    """The corpus's one frame: (init_e(teacher_vec) -> (D,) or None, memory bank, extra loss or None).

    The fixed projection Q gives the teacher-aligned init and the anchor loss; the bank starts from the
    corpus already written, so a resumed run and a later query share the frame of the first run."""
    Q = None
    if fcfg.init == "teacher" or bcfg.anchor_weight > 0:
        Q = teacher_projection(teacher.dim, llm.hidden_size, bcfg.projection_seed)

    def init_e(t: torch.Tensor) -> torch.Tensor | None:
        return F.normalize(t @ Q, dim=0) * llm.embed_norm if fcfg.init == "teacher" else None

    bank = MemoryBank(bcfg.rd_bank if bcfg.rd_weight > 0 else 0)
    _seed_bank(Path(out), bank, bcfg.rd_target)
    reg = None
    if bcfg.rd_weight > 0 or bcfg.anchor_weight > 0:
        reg = TeacherRegulariser(bcfg.rd_weight, bcfg.anchor_weight, bcfg.rd_target, Q, bank)
    return init_e, bank, reg


def fit_in_corpus_frame(path: str | Path, texts: list[str], *, llm: FrozenLLM | None = None,
                        teacher: Teacher | None = None, max_steps: int | None = None) -> list[FitResult]:
    """Fit new texts exactly as the corpus was fitted (same model, layout, init frame, regularisers),
    without writing them, e.g. to find their neighbours. Results in input order."""
    path = Path(path)
    man = read_manifest(path)
    fcfg = FitConfig.from_dict(man["fit_config"])
    if max_steps is not None:
        fcfg = FitConfig.from_dict({**fcfg.to_dict(), "max_steps": max_steps})
    bcfg = BuildConfig(**man["build_config"])
    llm = llm or load_llm(bcfg.model, device=bcfg.device)
    if llm.fingerprint != man["llm"]["fingerprint"]:
        raise NarError(f"{path} was built with LLM {man['llm']['fingerprint']}, the loaded model is {llm.fingerprint}")
    teacher = teacher or load_teacher(bcfg.teacher)
    if teacher.fingerprint != man["teacher"]["fingerprint"]:
        raise NarError(f"{path} was built with teacher {man['teacher']['fingerprint']}, not {teacher.fingerprint}")
    from nar.fit import prepare_ids

    init_e, _, reg = corpus_frame(path, llm, teacher, fcfg, bcfg)
    items = [FitItem(key=str(i), ids=prepare_ids(llm, text, fcfg), init_key=text, init_e=init_e(t),
                     payload={"source": text, "target": text, "teacher": t})
             for i, (text, t) in enumerate(zip(texts, teacher.encode(texts)))]
    by_key = {r.key: r for r in fit_stream(llm, items, fcfg, extra_loss=reg)}
    return [by_key[str(i)] for i in range(len(texts))]


def distributed_context(device: str = "auto") -> tuple[int, int, str, Callable[[], None]]:
    """(rank, world_size, device, barrier). Under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) these
    come from accelerate's PartialState (NCCL on GPUs, gloo on CPUs); otherwise a single worker."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))
    return state.process_index, state.num_processes, str(state.device), state.wait_for_everyone
