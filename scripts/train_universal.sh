#!/usr/bin/env bash
# The bundled universal agent (rsd_rerank/checkpoints/universal, the default for any target without an
# agent of its own), then its check on targets it never saw (benchmarks/universal.py). Resumable.
# One equivariant agent with Jacobi features, Stage I, on five targets' greedy rankings of the same 200
# SciFact training claims (16 held out for validation): random Llamas of three seeds and two inits, the
# embedded SmolLM2 and the realistic smollm2-reranker. Then copy agent.json and model.safetensors into
# rsd_rerank/checkpoints/universal/.
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
OUT=${OUT:-runs/agents/universal}

resume=(); [ -f "$OUT/train_state.pt" ] && resume=(--resume)
[ -f "$OUT/stage1/agent.json" ] || rsd-rerank train --model random-llama --with-model random-llama:seed=1 \
    --with-model random-llama:seed=2,init=0.05 --with-model smollm2 --with-model smollm2-reranker \
    --dtype bfloat16 --requests "$FIT200" --max-passage-words 30 --batch-size 8 --out "$OUT" "${resume[@]}" \
    --network equivariant --features jacobi --stage1-epochs 8 --rpo-epochs 0 --val-queries 16
