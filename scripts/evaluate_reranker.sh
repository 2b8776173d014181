#!/usr/bin/env bash
# After scripts/train_reranker.sh (issue #30): ship the chosen snapshot as smollm2-reranker and measure it on
# the SciFact *test* claims, candidates in BM25 order as users' requests come. Every step resumes or is
# skipped when its result file exists; bf16, 30-word passages (the prompt it was trained with). Its files end in -v2:
# the first target's (made by train_reranker_v1.sh) keep their names.
#   STEP=N bash scripts/evaluate_reranker.sh
# The snapshot is chosen on held-out *training* claims only (runs/smollm2-reranker/curve.jsonl and
# `scripts/reranker_probe.py --adapters …`), never on these.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
STEP=${STEP:?set STEP to the chosen snapshot}
QRELS=../shared/data/beir-scifact/qrels.beir-v1.0.0-scifact.test.txt
R=benchmarks/results

grep -q "\"step\": $STEP," rsd_rerank/rerankers/smollm2-reranker/reranker.json ||
    .venv/bin/python scripts/ship_reranker.py "runs/smollm2-reranker/snapshots/step-$STEP" --step "$STEP"
# nDCG@10 of its greedy ranking on all 300 test claims, beside BM25's order (about 7 minutes on 2 cores)
[ -f $R/ndcg-smollm2-reranker-v2.json ] || rsd-rerank compare --model smollm2-reranker --dtype bfloat16 \
    --max-passage-words 30 --requests "$TEST" --qrels "$QRELS" --methods greedy --batch-size 8 \
    --out $R/ndcg-smollm2-reranker-v2
# Its default agent (rsd_rerank/checkpoints/smollm2-reranker), retrained on it: equivariant, Jacobi features,
# Stage I on the first 200 fitting training claims (24 held out), as the first target's was
A=runs/agents/smollm2-reranker-jacobi
resume=(); [ -f $A/train_state.pt ] && resume=(--resume)
[ -f $A/agent.json ] || rsd-rerank train --model smollm2-reranker --dtype bfloat16 --requests "$FIT200" \
    --max-passage-words 30 --batch-size 8 --out $A --network equivariant --features jacobi --stage1-epochs 8 \
    --rpo-epochs 0 --val-queries 24 "${resume[@]}"
cmp -s $A/model.safetensors rsd_rerank/checkpoints/smollm2-reranker/model.safetensors ||
    cp $A/agent.json $A/model.safetensors rsd_rerank/checkpoints/smollm2-reranker/
# Difficulty and content figures with CIs on the first 100 (GSD, consensus, PDM, RSD, RSD-drafts at T = 1, 3, 5, 7;
# prefix dependence; shuffle consistency; letter KT; nDCG@10): resumable per claim
rsd-rerank difficulty --model smollm2-reranker --dtype bfloat16 --max-passage-words 30 --requests "$TEST" \
    --queries 100 --budgets 1,3,5,7 --qrels "$QRELS" --out $R/difficulty-smollm2-reranker-v2
