"""Print the training progress of study runs from their TensorBoard logs: python scripts/tb_peek.py [GLOB]"""
import glob
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

for d in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else "out/study/*/tb")):
    ea = EventAccumulator(d)
    ea.Reload()
    tags = ea.Tags()["scalars"]
    loss = next((t for t in ("encoder/loss_ce", "encoder/loss_ctc") if t in tags), None)
    if loss:
        s = ea.Scalars(loss)
        k = min(20, len(s))
        rate = (s[-1].wall_time - s[-k].wall_time) / max(1, k - 1)
        ce = sum(x.value for x in s[-20:]) / k
        print(d, len(s), f"steps; {loss[13:]} (mean of last 20)", round(ce, 3), "s/step", round(rate, 2))
    if "encoder/val_token_acc" in tags:
        print("  val acc", [(x.step, round(x.value, 3)) for x in ea.Scalars("encoder/val_token_acc")],
              "distinct", [round(x.value, 2) for x in ea.Scalars("encoder/val_distinct_share")])
