#!/usr/bin/env bash
# Runs every benchmark of docs/RESULTS.md one after another (never two at once: 2 cores), then
# draws the report. Usage: bash bench/run_all.sh [OUT]   (default /tmp/adapter_bert_bench)
# Needs the bench extra: pip install -e ".[bench]". About 7 hours on 2 cores, mostly accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/adapter_bert_bench}"
export HF_HUB_OFFLINE=1

python bench/train_throughput.py --methods houlsby,pfeiffer,parallel,lora,ia3,prefix,bitfit,full \
    --steps 5 --rounds 5 --out "$OUT"
python bench/peers.py --mode throughput --task mrpc --batches_npz "$OUT/train_batches.npz" --rounds 5 --out "$OUT/peers"
python bench/inference.py --rounds 5 --out "$OUT"
python bench/memory.py --steps 4 --out "$OUT"
python bench/onednn.py --out "$OUT"
python bench/matmul_peak.py --out "$OUT"
# Adapter-training memory with and without the attention recomputation, the arithmetic
# efficiency of a step against the matmul rate, and bf16 beside float32.
python bench/memory.py --methods full,houlsby,houlsby@recompute,full@recompute --steps 4 --out "$OUT/memory_recompute"
python bench/efficiency.py --methods houlsby,full,houlsby@bf16,full@bf16 --out "$OUT"
python bench/elementwise.py --out "$OUT"
python bench/profile_step.py --methods houlsby,houlsby_drop3 --out "$OUT/profile_drop"
python bench/train_throughput.py --methods full,full@bf16,houlsby,houlsby@bf16 --paddings dynamic,bucketed \
    --steps 5 --rounds 3 --out "$OUT/bf16"
python bench/inference.py --bf16 --rounds 3 --out "$OUT/bf16"
python bench/accuracy.py --tasks mrpc --methods houlsby@bf16,full@bf16 --out "$OUT/checks/bf16"
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
# The newer methods beside the adapters library's runs of the same identifiers.
NEWER=compacter,compacter++,seq_bn_inv,double_seq_bn_inv,prompt_tuning,unipelt,dora,vera,loreft,noreft,direft
LIBRARY=$(printf 'adapters:%s,' ${NEWER//,/ }); LIBRARY=${LIBRARY%,}
python bench/train_throughput.py --methods "houlsby,$NEWER" --paddings dynamic --steps 5 --rounds 3 --out "$OUT/newer"
python bench/peers.py --mode throughput --systems "adapters_houlsby,$LIBRARY" --padding dynamic \
    --batches_npz "$OUT/newer/train_batches.npz" --rounds 3 --out "$OUT/newer/peers"
python bench/accuracy.py --tasks mrpc --methods "$NEWER" --mrpc_train_examples 1000 --epochs 2 \
    --out "$OUT/checks/newer_methods"
python bench/peers.py --mode accuracy --systems "$LIBRARY" --project_subset 1000 --epochs 2 \
    --padding dynamic --out "$OUT/newer/peers"
# The same methods with the whole budget (all of MRPC, 3 epochs, 3 seeds), both sides; four of
# them also with the peers' head (@cls), the control that tells a head effect from a method's.
SAME_HEAD="compacter@cls,compacter++@cls,seq_bn_inv@cls,loreft@cls"
python bench/accuracy.py --tasks mrpc --methods "$NEWER,$SAME_HEAD" --seeds 0,1,2 --epochs 3 \
    --out "$OUT/newer_full"
python bench/peers.py --mode accuracy --systems "$LIBRARY" --seeds 0,1,2 --epochs 3 \
    --padding dynamic --out "$OUT/newer_full/peers"
python bench/newer_methods_report.py --results "$OUT"
# Fine-tuning techniques: tasks in sequence, and the selection protocol on dev.
python bench/continual.py --out "$OUT/continual"
python bench/selection.py --out "$OUT/selection"
python bench/report.py --results "$OUT" --docs docs
