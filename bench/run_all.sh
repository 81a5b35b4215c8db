#!/usr/bin/env bash
# Runs every benchmark of docs/RESULTS.md one after another (never two at once: 2 cores), then
# draws the report. Usage: bash bench/run_all.sh [OUT]   (default /tmp/adapter_bert_bench)
# Needs the bench extra: pip install -e ".[bench]". About 5-6 hours on 2 cores, mostly accuracy.
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
python bench/profile_step.py --peers adapters_houlsby,torch_full --out "$OUT"
python bench/accuracy.py --tasks mrpc,sst2 --seeds 0,1,2 --epochs 3 --out "$OUT"
python bench/peers.py --mode accuracy --task mrpc --systems adapters_houlsby,peft_lora,torch_full \
    --padding dynamic --seeds 0,1,2 --epochs 3 --out "$OUT/peers"
# Checks behind RESULTS' accuracy explanations, each with one setting changed from the preset.
python bench/accuracy.py --tasks mrpc --methods lora --learning_rate 1e-3 --out "$OUT/checks/lora_lr1e-3"
python bench/accuracy.py --tasks sst2 --methods houlsby,full --seeds 0 --sst2_train_examples 8000 \
    --out "$OUT/checks/sst2_8000"
python bench/accuracy.py --tasks sst2 --methods houlsby --learning_rate 2e-3 --out "$OUT/checks/sst2_houlsby_lr2e-3"
python bench/accuracy.py --tasks sst2 --methods houlsby --bottleneck_size 256 --out "$OUT/checks/sst2_houlsby_b256"
# Many adapters at once: stacked and fused adapters on MRPC, and mixed-task serving.
python bench/composition_runs.py --seeds 0,1,2 --out "$OUT/stacking"
python bench/mixed_serving.py --rounds 5 --out "$OUT"
python bench/mixed_serving.py --rounds 5 --methods houlsby,pfeiffer,lora,prefix --out "$OUT/mixed_methods"
python bench/report.py --results "$OUT" --docs docs
