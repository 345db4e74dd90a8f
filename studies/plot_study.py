"""Plot study runs' periodic held-out token accuracy and training CE against the step, from their TensorBoard logs.

    python -m studies.plot_study OUT.png RUN [RUN ...]      # RUN: a name under out/study/ or a run folder

The periodic validation is the first 200 held-out STS-B dev sentences (docs/ENCODER.md, "Set-up"); the CE curve
is smoothed over 25 steps.
"""

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nar.analysis.report import figure, save_figure


def scalars(run: Path, *tags: str) -> list[list[tuple[int, float]]]:
    """Each tag's (step, value) points from the run's TensorBoard log, read once ([] for a tag it lacks)."""
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    have = ea.Tags()["scalars"]
    return [[(x.step, x.value) for x in ea.Scalars(t)] if t in have else [] for t in tags]


def smooth(points: list[tuple[int, float]], k: int = 25) -> list[tuple[int, float]]:
    out = []
    for i, (step, _) in enumerate(points):
        window = points[max(0, i - k + 1):i + 1]
        out.append((step, sum(v for _, v in window) / len(window)))
    return out


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, runs = sys.argv[1], [Path(r) if Path(r).is_dir() else Path("out/study") / r for r in sys.argv[2:]]
    plt = figure()
    fig, (acc_ax, ce_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for k, run in enumerate(runs):
        val, ce = scalars(run, "encoder/val_token_acc", "encoder/loss_ce")
        ce = smooth(ce)
        if val:
            acc_ax.plot(*zip(*val), marker="o", color=f"C{k}", label=run.name)
        if ce:
            ce_ax.plot(*zip(*ce), color=f"C{k}", label=run.name)
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("held-out token accuracy (periodic, 200)")
    ce_ax.set_xlabel("step")
    ce_ax.set_ylabel("training CE (25-step mean)")
    for ax in (acc_ax, ce_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out)
    print(out)


if __name__ == "__main__":
    main()
