#!/usr/bin/env bash
# Runs the Rust and Python grader benchmarks on this machine, ROUNDS times, Rust then
# Python in each round, and prints each side's best throughput with the ratio of the
# two bests, plus the lowest and highest per-round ratio (the machines are shared and
# noisy; a single round can be off by 30% on either side).
#
#     scripts/run_grader_bench.sh [SECONDS_PER_GRADER] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export NLTK_DATA="${NLTK_DATA:-/tmp/lathe-nltk-data}"
secs="${1:-0.5}"
rounds="${2:-3}"
cargo build --release --example grader_bench >/dev/null
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  ./target/release/examples/grader_bench --seconds "$secs" >"$out/rust.$r"
  python3 scripts/grader_bench.py --seconds "$secs" >"$out/py.$r"
done
python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(side, r):
    return {row["grader"]: row for row in map(json.loads, open(f"{out}/{side}.{r}"))}
rust = [load("rust", r) for r in range(1, rounds + 1)]
py = [load("py", r) for r in range(1, rounds + 1)]
print(f"{rounds} rounds; best of each side, and the spread of per-round ratios")
print(f"{'grader':<22}{'rust pairs/s':>14}{'python pairs/s':>16}{'ratio':>9}{'per round':>16}")
for name in rust[0]:
    if name == "python_warm_call":
        continue
    best_r = max(run[name]["pairs_per_s"] for run in rust)
    if name not in py[0]:
        print(f"{name:<22}{best_r:>14.0f}{'-':>16}{'-':>9}")
        continue
    best_p = max(run[name]["pairs_per_s"] for run in py)
    per = [rr[name]["pairs_per_s"] / pp[name]["pairs_per_s"] for rr, pp in zip(rust, py)]
    spread = f"{min(per):.1f}-{max(per):.1f}x"
    print(f"{name:<22}{best_r:>14.0f}{best_p:>16.0f}{best_r / best_p:>8.1f}x{spread:>16}")
calls = [run["python_warm_call"]["us_per_pair"] for run in rust if "python_warm_call" in run]
if calls:
    print(f"python grader warm call: {min(calls):.1f} to {max(calls):.1f} us")
PY
rm -rf "$out"
