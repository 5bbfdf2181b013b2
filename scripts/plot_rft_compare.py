"""Lathe's and TRL's RFT (GRPO) side by side, per step: the train reward
(each step's samples) and Lathe's validation reward, from
bench/banking77_rft.py's output.

    python scripts/plot_rft_compare.py OUT/rft/rft_metrics.jsonl OUT/rft/trl/train_result.json docs/banking77_rft.svg

Needs matplotlib. Prints the mean train reward over the steps both sides ran.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

lathe_path, trl_path, out = sys.argv[1:4]
lathe = [json.loads(l) for l in open(lathe_path) if l.strip()]
trl = json.load(open(trl_path))["per_step"]

train = [(m["step"], m["train_reward_mean"]) for m in lathe if m.get("train_reward_mean") is not None]
valid = [(m["step"], m["valid_reward_mean"]) for m in lathe if m.get("valid_reward_mean") is not None]
peer = [(h["step"], h["reward"]) for h in trl if h.get("reward") is not None]

n = min(len(train), len(peer))
mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
print(f"steps 1-{n}: mean train reward Lathe {mean([r for _, r in train[:n]]):.4f}, "
      f"TRL {mean([r for _, r in peer[:n]]):.4f}")

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(*zip(*train), label="Lathe, train (batch)", lw=1)
if valid:
    ax.plot(*zip(*valid), label="Lathe, validation", lw=1.5, marker="o")
ax.plot(*zip(*peer), label="TRL, train (batch)", lw=1)
ax.set_xlabel("step")
ax.set_ylabel("mean reward (exact label)")
ax.set_ylim(0, 1)
ax.legend()
ax.set_title("Banking77 RFT (GRPO) from the SFT model, equal settings")
fig.tight_layout()
fig.savefig(out)
print(f"wrote {out}")
