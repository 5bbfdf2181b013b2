"""Lathe's and TRL's DPO side by side, per step: the loss and
rewards/accuracies (each step's batch), from bench/banking77_dpo.py's output.

    python scripts/plot_dpo_compare.py OUT/dpo_metrics.jsonl OUT/trl/train_result.json docs/banking77_dpo.svg

Needs matplotlib. Prints the mean loss over each third of the steps for both
sides and their ratio, and the final 10-step means.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

lathe_path, trl_path, out = sys.argv[1:4]
lathe = [json.loads(l) for l in open(lathe_path) if l.strip()]
trl = json.load(open(trl_path))["per_step"]

ls = [m["step"] for m in lathe]
l_loss = [m["train_loss"] for m in lathe]
l_acc = [m["values"].get("train_rewards/accuracies") for m in lathe]
ts = [h["step"] for h in trl]
t_loss = [h["loss"] for h in trl]
t_acc = [h["rewards/accuracies"] for h in trl]


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


n = min(len(l_loss), len(t_loss))
thirds = [(0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)]
for a, b in thirds:
    la, ta = mean(l_loss[a:b]), mean(t_loss[a:b])
    print(f"steps {a + 1}-{b}: mean loss Lathe {la:.4f}, TRL {ta:.4f}, Lathe/TRL {la / ta:.3f}")
print(f"all {n} steps: Lathe {mean(l_loss[:n]):.4f}, TRL {mean(t_loss[:n]):.4f}, "
      f"Lathe/TRL {mean(l_loss[:n]) / mean(t_loss[:n]):.3f}")
print(f"last 10 steps: loss Lathe {mean(l_loss[n - 10:n]):.4f}, TRL {mean(t_loss[n - 10:n]):.4f}; "
      f"rewards/accuracies Lathe {mean(l_acc[n - 10:n]):.3f}, TRL {mean(t_acc[n - 10:n]):.3f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(ls, l_loss, label="Lathe", lw=1)
ax1.plot(ts, t_loss, label="TRL", lw=1)
ax1.set_xlabel("step")
ax1.set_ylabel("DPO loss (sigmoid, batch mean)")
ax1.legend()
ax2.plot(ls, l_acc, label="Lathe", lw=1)
ax2.plot(ts, t_acc, label="TRL", lw=1)
ax2.set_xlabel("step")
ax2.set_ylabel("rewards/accuracies (batch)")
ax2.legend()
fig.suptitle("Banking77 DPO from the SFT model, equal settings")
fig.tight_layout()
fig.savefig(out)
print(f"wrote {out}")
