"""An RFT job's reward curves per grader: train (each step's samples, at the
sampling temperature) and validation, from the metrics JSONL a bench writes
(`lathe jobs metrics JOB --json`), e.g. bench/reasoning_gym_rft.py's.

    python scripts/plot_rft_rewards.py OUT/rft_metrics.jsonl docs/reasoning_gym_rft.svg "title"

Needs matplotlib. Per-grader curves are the `rewards/<name>` values (a multi
grader's sub-graders); without any, the reward mean.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

path, out = sys.argv[1:3]
title = sys.argv[3] if len(sys.argv) > 3 else "RFT rewards"
metrics = [json.loads(l) for l in open(path) if l.strip()]


def series(split, name):
    key = f"{split}_rewards/{name}"
    return [(m["step"], m["values"][key]) for m in metrics if key in m.get("values", {})]


names = sorted({k.split("/", 1)[1] for m in metrics for k in m.get("values", {}) if k.startswith("train_rewards/")})
fig, ax = plt.subplots(figsize=(7, 4))
if not names:
    ax.plot(*zip(*[(m["step"], m["train_reward_mean"]) for m in metrics if m.get("train_reward_mean") is not None]),
            label="train", lw=1)
    ax.plot(*zip(*[(m["step"], m["valid_reward_mean"]) for m in metrics if m.get("valid_reward_mean") is not None]),
            label="validation", lw=1.5, marker="o")
for i, name in enumerate(names):
    color = f"C{i}"
    train = series("train", name)
    if train:
        ax.plot(*zip(*train), label=f"{name}, train (batch, temperature 1)", lw=0.8, color=color, alpha=0.6)
    valid = series("valid", name)
    if valid:
        ax.plot(*zip(*valid), label=f"{name}, validation", lw=1.5, marker="o", color=color)
ax.set_xlabel("step")
ax.set_ylabel("mean reward")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title(title)
fig.tight_layout()
fig.savefig(out)
print(f"wrote {out}")
