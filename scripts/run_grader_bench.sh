#!/usr/bin/env bash
# Runs the Rust and Python grader benchmarks back to back on this machine and prints
# Rust/Python throughput ratios (the numbers BENCHMARKS.md reports).
set -euo pipefail
cd "$(dirname "$0")/.."
export NLTK_DATA="${NLTK_DATA:-/tmp/lathe-nltk-data}"
secs="${1:-0.5}"
cargo build --release --example grader_bench >/dev/null
rust=$(mktemp); py=$(mktemp)
./target/release/examples/grader_bench --seconds "$secs" >"$rust"
python3 scripts/grader_bench.py --seconds "$secs" >"$py"
python3 - "$rust" "$py" <<'PY'
import json, sys
rust = {r["grader"]: r for r in map(json.loads, open(sys.argv[1]))}
py = {r["grader"]: r for r in map(json.loads, open(sys.argv[2]))}
print(f"{'grader':<22}{'rust pairs/s':>14}{'python pairs/s':>16}{'ratio':>9}")
for name, r in rust.items():
    p = py.get(name)
    ratio = f"{r['pairs_per_s'] / p['pairs_per_s']:.1f}x" if p else "-"
    pps = f"{p['pairs_per_s']:.0f}" if p else "-"
    print(f"{name:<22}{r['pairs_per_s']:>14.0f}{pps:>16}{ratio:>9}")
if "python_warm_call" in rust:
    print(f"python grader warm call: {rust['python_warm_call']['us_per_pair']:.1f} us")
PY
