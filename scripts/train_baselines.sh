#!/usr/bin/env bash
# Reproduces the paper's baselines and their comparison (README: "The paper's baselines"). Resumable: rerun
# after a kill (the teacher is cached per batch, LoRA runs continue with --resume, finished ones are skipped).
# Needs `bash scripts/setup.sh` first. Training data: SciFact training claims only (BM25 top 20); the
# comparison uses the first 100 test claims (50 for SmolLM2, for CPU time). CPU: about an hour on 2 cores.
source "$(dirname "$0")/scifact_requests.sh"
CACHE=${RSD_RERANK_CACHE:-$HOME/.cache/rsd-rerank}/baselines
head -n 120 "$TRAIN" > data/scifact/train120.top20.jsonl

finetune() {  # TARGET-FOLDER METHOD, then `rsd-rerank finetune` options; skipped when finished
    local folder=$1 method=$2; shift 2
    [ -f "$CACHE/$folder/$method/heads.json" ] || [ -f "$CACHE/$folder/$method/ranker.json" ] && return 0
    rsd-rerank finetune --dtype float32 --method "$method" --batch-size 8 --resume "$@"  # fp32: how they were made
}

# The hard target: heads on all 809 training claims, LoRA rankers on the first 400 (one epoch).
RL=random-llama-seed-0-init-0.1-h-256-L-4
finetune $RL medusa --model random-llama --requests "$TRAIN"
finetune $RL blockwise --model random-llama --requests "$TRAIN"
finetune $RL first-ft --model random-llama --requests "$TRAIN" --queries 400 --epochs 1
finetune $RL rankzephyr-ft --model random-llama --requests "$TRAIN" --queries 400 --epochs 1
# The easy target: heads on the first 48 of the 120 claims its bundled agent was trained on, passages cut to
# 40 words. Its LoRA fine-tunes (same commands, --epochs 1) took 40 s a query here (the test suite sharing the 2 cores) and were
# not run; the SmolLM2 comparison leaves first-ft, rankzephyr-ft and first-sd out.
SMOL=(--model smollm2 --requests data/scifact/train120.top20.jsonl --queries 48 --max-passage-words 40)
finetune smollm2 medusa "${SMOL[@]}"
finetune smollm2 blockwise "${SMOL[@]}"

B=sdm,blockwise,medusa,pdm,first-ft,rankzephyr-ft,first-sd
python benchmarks/fidelity.py --dtype float32 --target random-llama --queries 100 --requests "$TEST" --agent rsd=random-llama \
    --baselines $B --out benchmarks/results/baselines-random-llama
python benchmarks/fidelity.py --dtype float32 --target smollm2 --queries 50 --requests "$TEST" --max-passage-words 40 \
    --agent rsd=smollm2 --baselines sdm,blockwise,medusa,pdm --out benchmarks/results/baselines-smollm2
python benchmarks/table1.py benchmarks/results/baselines-random-llama.json benchmarks/results/baselines-smollm2.json \
    --out benchmarks/results/table1
