#!/usr/bin/env bash
# Reproduces the bundled agents and the fidelity benchmarks (README: "Agents"). Resumable: rerun after a kill.
# Needs `bash scripts/setup.sh` first. Training data: SciFact's 809 training claims (all claims minus the
# 300 test claims), BM25 top 20; the benchmarks use the first 100 test claims. CPU: about an hour on 2 cores.
source "$(dirname "$0")/scifact_requests.sh"
AGENTS=runs/agents

train() {  # OUT, then `rsd-rerank train` options; skipped when OUT holds a finished agent
    local out=$1; shift
    if [ -f "$out/agent.json" ] && grep -q '"stage": "rpo"' "$out/agent.json"; then return; fi
    local resume=(); [ -f "$out/train_state.pt" ] && resume=(--resume)
    rsd-rerank train --dtype float32 --requests "$TRAIN" --out "$out" "${resume[@]}" "$@"  # fp32: how they were made
}

# The hard, paper-like target (shared/targets.md): every network, both advantages.
RL=(--model random-llama --stage1-epochs 8 --rpo-epochs 1 --rpo-queries 256 --val-queries 48)
train $AGENTS/random-llama-equivariant "${RL[@]}" --network equivariant --features rows
train $AGENTS/random-llama-equivariant-group "${RL[@]}" --network equivariant --features rows --advantage group
train $AGENTS/random-llama-paper "${RL[@]}" --network paper
train $AGENTS/random-llama-mlp "${RL[@]}" --network mlp
train $AGENTS/random-llama-paper-group "${RL[@]}" --network paper --advantage group
train $AGENTS/random-llama-mlp-group "${RL[@]}" --network mlp --advantage group

python benchmarks/fidelity.py --dtype float32 --target random-llama --queries 100 --requests "$TEST" \
    --agent rsd-equivariant=$AGENTS/random-llama-equivariant \
    --agent rsd-equivariant-stage1=$AGENTS/random-llama-equivariant/stage1 \
    --agent rsd-equivariant-group=$AGENTS/random-llama-equivariant-group \
    --agent rsd-paper=$AGENTS/random-llama-paper \
    --agent rsd-paper-stage1=$AGENTS/random-llama-paper/stage1 \
    --agent rsd-mlp=$AGENTS/random-llama-mlp \
    --agent rsd-mlp-stage1=$AGENTS/random-llama-mlp/stage1 \
    --agent rsd-paper-group=$AGENTS/random-llama-paper-group \
    --agent rsd-mlp-group=$AGENTS/random-llama-mlp-group \
    --pair rsd-equivariant:rsd-equivariant-stage1 --pair rsd-equivariant-group:rsd-equivariant-stage1 \
    --pair rsd-equivariant:rsd-paper --pair rsd-paper:rsd-paper-stage1 --pair rsd-mlp:rsd-mlp-stage1 \
    --pair rsd-paper-group:rsd-paper-stage1 --pair rsd-mlp-group:rsd-mlp-stage1 \
    --out benchmarks/results/fidelity-random-llama

# The embedded SmolLM2 (an easy target): 120 training claims, passages cut to 40 words for CPU time.
head -n 120 "$TRAIN" > data/scifact/train120.top20.jsonl
train $AGENTS/smollm2-equivariant --model smollm2 --requests data/scifact/train120.top20.jsonl \
    --max-passage-words 40 --stage1-epochs 8 --rpo-epochs 1 --rpo-queries 32 --val-queries 24 --network equivariant --features rows
python benchmarks/fidelity.py --dtype float32 --target smollm2 --queries 100 --requests "$TEST" --max-passage-words 40 \
    --agent rsd-equivariant=$AGENTS/smollm2-equivariant \
    --agent rsd-equivariant-stage1=$AGENTS/smollm2-equivariant/stage1 \
    --pair rsd-equivariant:rsd-equivariant-stage1 \
    --out benchmarks/results/fidelity-smollm2
# The bundled agents: the full method (Stage I + RPO, reference advantage), equivariant network.
for t in random-llama smollm2; do
    mkdir -p rsd_rerank/checkpoints/$t
    cp $AGENTS/$t-equivariant/agent.json $AGENTS/$t-equivariant/model.safetensors rsd_rerank/checkpoints/$t/
done
