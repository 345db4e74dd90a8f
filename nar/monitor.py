"""Monitoring: rich progress for fitting, one small TensorBoard writer with a no-op twin, and the
TensorBoard embedding projector of a corpus."""

from __future__ import annotations

import time
from pathlib import Path

from nar.fit import FitResult, StepStats


class FitProgress:
    """A rich progress bar over texts: done, converged %, texts/min, ETA, current step's loss and accuracy.

    Use as a context manager; pass `.on_step` and `.on_result` to the fitting functions.
    `enabled=False` gives a silent twin (for --json output and tests).
    """

    def __init__(self, total: int, description: str = "fitting", enabled: bool = True, writer=None):
        self.total, self.enabled, self.writer = total, enabled, writer
        self.done = self.converged = 0
        self.steps_sum = 0
        self.t0 = time.perf_counter()
        self._progress = None
        self._task = None
        self.description = description

    def __enter__(self) -> FitProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                      TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @property
    def texts_per_min(self) -> float:
        return 60.0 * self.done / max(time.perf_counter() - self.t0, 1e-9)

    def on_step(self, s: StepStats) -> None:
        if self.writer is not None:
            self.writer.scalar("fit/loss", s.loss, s.step)
            self.writer.scalar("fit/token_acc", s.token_acc, s.step)
            for k, v in s.extra.items():
                self.writer.scalar(f"fit/{k}", v, s.step)
        if self._progress is not None:
            conv = 100.0 * self.converged / self.done if self.done else 0.0
            self._progress.update(self._task, info=f"step {s.step}  loss {s.loss:.3f}  acc {s.token_acc:.3f}  "
                                                   f"conv {conv:.0f}%  {self.texts_per_min:.1f} texts/min")
        self._last_step = s.step

    def on_result(self, r: FitResult) -> None:
        self.done += 1
        self.converged += int(r.converged)
        self.steps_sum += r.steps
        if self.writer is not None:
            step = getattr(self, "_last_step", 0)
            self.writer.scalar("fit/converged_frac", self.converged / self.done, step)
            self.writer.scalar("fit/steps_per_text", self.steps_sum / self.done, step)
            self.writer.scalar("fit/texts_per_min", self.texts_per_min, step)
        if self._progress is not None:
            self._progress.advance(self._task)


class TensorBoardWriter:
    """Scalars to TensorBoard under `log_dir` (tags like `fit/loss`)."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._w = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._w.add_scalar(tag, value, step)

    def close(self) -> None:
        self._w.flush()
        self._w.close()


class NullWriter:
    """The no-op twin of TensorBoardWriter."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def write_projector(path: str | Path, space: str = "e", log_dir: str | Path | None = None) -> Path:
    """A TensorBoard embedding-projector log of a corpus: vectors of the space, text + accuracy + N + RD
    weight as metadata. Browse with `tensorboard --logdir LOG_DIR` (Projector tab)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from nar.corpus import read_manifest
    from nar.index import corpus_vectors

    ids, x, cols = corpus_vectors(path, space)
    rd = read_manifest(path).get("build_config", {}).get("rd_weight")
    log_dir = Path(log_dir or Path(path) / "projector" / space)
    w = SummaryWriter(log_dir=str(log_dir))
    meta = [[i, t.replace("\t", " ").replace("\n", " ")[:200], f"{a:.3f}", str(n), str(rd)]
            for i, t, a, n in zip(ids, cols["target"], cols["accuracy"], cols["n_tokens"])]
    w.add_embedding(torch.from_numpy(x), metadata=meta, metadata_header=["id", "text", "accuracy", "n_tokens",
                                                                          "rd_weight"], tag=f"proto_{space}")
    w.close()
    return log_dir
