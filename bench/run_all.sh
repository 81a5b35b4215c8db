#!/usr/bin/env bash
# Runs every benchmark of docs/RESULTS.md one after another (never two at once: 2 cores), then
# draws the report. Usage: bash bench/run_all.sh [OUT]   (default /tmp/adapter_bert_bench)
# Needs the bench extra: pip install -e ".[bench]". About 4-5 hours on 2 cores, mostly accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/adapter_bert_bench}"
export HF_HUB_OFFLINE=1

python bench/train_throughput.py --steps 5 --rounds 5 --out "$OUT"
python bench/peers.py --mode throughput --task mrpc --batches_npz "$OUT/train_batches.npz" --rounds 5 --out "$OUT/peers"
python bench/inference.py --rounds 5 --out "$OUT"
python bench/memory.py --steps 4 --out "$OUT"
python bench/onednn.py --out "$OUT"
python bench/matmul_peak.py --out "$OUT"
python bench/accuracy.py --tasks mrpc,sst2 --seeds 0,1,2 --epochs 3 --out "$OUT"
python bench/peers.py --mode accuracy --task mrpc --systems adapters_houlsby,peft_lora,torch_full \
    --padding dynamic --seeds 0,1,2 --epochs 3 --out "$OUT/peers"
python bench/report.py --results "$OUT" --docs docs
