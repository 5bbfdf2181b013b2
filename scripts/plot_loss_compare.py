"""Plots Lathe's and TRL's training loss per step, side by side, as an SVG (no plotting
library needed), and writes the merged CSV next to it.

    python3 scripts/plot_loss_compare.py LATHE_LOSS_CSV TRL_TRAIN_RESULT_JSON OUT_PREFIX

LATHE_LOSS_CSV is examples/banking77's loss.csv; TRL_TRAIN_RESULT_JSON is
bench/trl_equal_settings.py's train_result.json. Draws each run's per-step loss faintly
and its 10-step moving average boldly.
"""
import csv
import json
import sys

lathe_csv, trl_json, out = sys.argv[1:4]
lathe = {}
valid = {}
for row in csv.DictReader(open(lathe_csv)):
    lathe[int(row["step"])] = float(row["train_loss"])
    if row["valid_loss"]:
        valid[int(row["step"])] = float(row["valid_loss"])
trl = {int(s): float(l) for s, l in json.load(open(trl_json))["losses"]}
steps = sorted(set(lathe) | set(trl))

with open(out + ".csv", "w") as f:
    f.write("step,lathe_train_loss,lathe_valid_loss,trl_train_loss\n")
    for s in steps:
        f.write(f"{s},{lathe.get(s, '')},{valid.get(s, '')},{trl.get(s, '')}\n")


def moving(series, k=10):
    keys = sorted(series)
    return {s: sum(series[t] for t in keys[max(0, i - k + 1):i + 1]) / len(keys[max(0, i - k + 1):i + 1])
            for i, s in enumerate(keys)}


W, H, L, R, T, B = 760, 420, 70, 740, 50, 370
xmax = max(steps)
ymax = max(max(lathe.values()), max(trl.values()))
ymax = (int(ymax * 2) + 1) / 2


def x(s):
    return L + (R - L) * s / xmax


def y(v):
    return B - (B - T) * v / ymax


def path(series, color, width, opacity):
    pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(series.items()))
    return (f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" '
            f'stroke-opacity="{opacity}"/>')


parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
         f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">SmolLM2-135M-Instruct, LoRA SFT on '
         f'500 Banking77 rows: loss on answer tokens</text>',
         f'<text x="{W / 2}" y="38" text-anchor="middle" font-size="11">Lathe and TRL at equal settings: '
         f'3 epochs, batch 8, lr 1e-3, 3% warmup, linear decay, LoRA r=8 on all linears</text>',
         f'<line x1="{L}" x2="{L}" y1="{T}" y2="{B}" stroke="black"/>'
         f'<line x1="{L}" x2="{R}" y1="{B}" y2="{B}" stroke="black"/>']
v = 0.0
while v <= ymax + 1e-9:
    parts.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>'
                 f'<line x1="{L}" x2="{R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
    v += 0.5
for s in range(0, xmax + 1, 25):
    parts.append(f'<text x="{x(s):.1f}" y="{B + 16}" text-anchor="middle">{s}</text>')
parts.append(f'<text x="{(L + R) / 2}" y="{B + 34}" text-anchor="middle">optimizer step</text>')
parts.append(path(lathe, "#1f77b4", 1, 0.3))
parts.append(path(trl, "#d62728", 1, 0.3))
parts.append(path(moving(lathe), "#1f77b4", 2.5, 1))
parts.append(path(moving(trl), "#d62728", 2.5, 1))
for s, val in valid.items():
    parts.append(f'<circle cx="{x(s):.1f}" cy="{y(val):.1f}" r="3.5" fill="#2ca02c"/>')
legend = [("#1f77b4", "Lathe train loss (10-step mean bold)"), ("#d62728", "TRL train loss (10-step mean bold)"),
          ("#2ca02c", "Lathe validation loss (60 held-out rows)")]
for i, (color, label) in enumerate(legend):
    yy = T + 14 + 18 * i
    parts.append(f'<rect x="{R - 260}" y="{yy - 9}" width="14" height="10" fill="{color}"/>'
                 f'<text x="{R - 240}" y="{yy}">{label}</text>')
parts.append("</svg>")
open(out + ".svg", "w").write("\n".join(parts) + "\n")
print(f"wrote {out}.svg and {out}.csv ({len(steps)} steps)")
