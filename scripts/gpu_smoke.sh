#!/usr/bin/env bash
# GPU smoke test, for a machine with an NVIDIA GPU (never part of CI):
#   1. builds lathe and the engine probe with `--features cuda` (needs cargo and
#      nvcc; skipped when LATHE_BIN names a lathe already built so),
#   2. runs `quickstart --small --base tiny` (a tiny random model: upload, an
#      eval of the base, an SFT job, an eval of the fine-tuned model) on the GPU
#      and then on the CPU, through the real server, and prints their times,
#   3. where models/SmolLM2-135M-Instruct.Q4_1.gguf exists, times a LoRA
#      training step and batched generation on both devices (examples/engine_probe).
# Logs go to $OUT (default: a temporary directory).
#   scripts/gpu_smoke.sh              # or: LATHE_BIN=/path/to/lathe scripts/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "logs in $out"

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$out/gpu.txt"
# candle's kernels are compiled for this GPU (nvidia-smi would be asked
# anyway; naming it keeps the build the same under a container).
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(head -1 "$out/gpu.txt" | awk -F', ' '{print $4}' | tr -d .)}

bin=${LATHE_BIN:-}
probe=${ENGINE_PROBE_BIN:-}
if [ -z "$bin" ]; then
    start=$(date +%s)
    cargo build --release --locked --features cuda --bin lathe --example engine_probe 2>&1 | tail -3
    echo "build with --features cuda: $(($(date +%s) - start)) s"
    bin=target/release/lathe
    probe=target/release/examples/engine_probe
fi

seconds() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$1"; }

for device in cuda cpu; do
    dir=$(mktemp -d)
    start=$(date +%s.%N)
    "$bin" quickstart --small --base tiny --device "$device" \
        --data-dir "$dir/data" --models-dir "$dir/models" > "$out/quickstart-$device.log" 2>&1 \
        || { tail -30 "$out/quickstart-$device.log"; echo "quickstart on $device failed"; exit 1; }
    echo "quickstart --small --base tiny on $device: $(seconds "$start") s"
    grep -E "engine on|time:|pass rate" "$out/quickstart-$device.log" | head -8
    rm -rf "$dir"
done

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -n "$probe" ] && [ -f "$model" ]; then
    for device in cuda cpu; do
        echo "engine_probe on $device ($model):"
        "$probe" "$model" --device "$device" --rounds 3 --batches 1,8,32 2>&1 | tee "$out/engine_probe-$device.log"
    done
else
    echo "no $model (or no engine_probe): skipping the SmolLM2 timings"
fi
