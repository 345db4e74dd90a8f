"""Print the training progress of encoder runs from their TensorBoard logs.

    python -m studies.tb_peek [GLOB]      # default: out/study/*/tb

Per run: logged steps, the mean training CE of the last 20 logged steps, seconds per step over them, and the
periodic held-out token accuracy and distinct-token share at each validation.
"""

import glob
import sys


def peek(tb_dir: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(tb_dir)
    ea.Reload()
    tags = ea.Tags()["scalars"]
    if "encoder/loss_ce" in tags:
        s = ea.Scalars("encoder/loss_ce")
        k = min(20, len(s))
        rate = (s[-1].wall_time - s[-k].wall_time) / max(1, k - 1)
        ce = sum(x.value for x in s[-k:]) / k
        print(tb_dir, len(s), "steps; CE (mean of last 20)", round(ce, 3), "s/step", round(rate, 2))
    if "encoder/val_token_acc" in tags:
        distinct = ea.Scalars("encoder/val_distinct_share") if "encoder/val_distinct_share" in tags else []
        print("  val acc", [(x.step, round(x.value, 3)) for x in ea.Scalars("encoder/val_token_acc")],
              "distinct", [round(x.value, 2) for x in distinct])


def main() -> None:
    for d in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else "out/study/*/tb")):
        peek(d)


if __name__ == "__main__":
    main()
