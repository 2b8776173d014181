#!/usr/bin/env bash
# The bundled universal agent (rsd_rerank/checkpoints/universal, the default for any target without an
# agent of its own), then its check on targets it never saw (benchmarks/universal.py). Resumable.
# One equivariant agent with Jacobi features, Stage I, on the greedy rankings of the same 200 SciFact training
# claims (16 held out for validation) by six targets of three families, each family weighing the same
# (rsd_rerank.training.trainer.family_weights): random Llamas of three seeds and two inits (PDM solves them);
# the embedded SmolLM2 with letters and with numbers as identifiers (it copies its input order); and
# smollm2-reranker, the content-driven target (shipped by scripts/evaluate_reranker.sh). The agent kept is the
# epoch whose worst target validates best, the untrained one (consensus) included. benchmarks/universal.py
# then checks it on targets it never saw, among them an early snapshot of the reranker's fine-tune that copies
# its input order. Then copy agent.json and model.safetensors into rsd_rerank/checkpoints/universal/.
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
OUT=${OUT:-runs/agents/universal-families}

resume=(); [ -f "$OUT/train_state.pt" ] && resume=(--resume)
[ -f "$OUT/stage1/agent.json" ] || rsd-rerank train --model random-llama --with-model random-llama:seed=1 \
    --with-model random-llama:seed=2,init=0.05 --with-model smollm2 --with-model smollm2-reranker \
    --with-model smollm2@rank_zephyr_template.yaml \
    --dtype bfloat16 --requests "$FIT200" --max-passage-words 30 --batch-size 8 --out "$OUT" "${resume[@]}" \
    --network equivariant --features jacobi --stage1-epochs 8 --rpo-epochs 0 --val-queries 16
