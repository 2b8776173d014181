#!/usr/bin/env bash
# The paper's whole table on the content-driven smollm2-reranker (issue #30), once scripts/evaluate_reranker.sh
# has shipped it and retrained its default agent, and scripts/train_universal.sh its universal successor.
# Every baseline's companion and every agent trained on it from training claims only; then every method at
# T = 1, 3, 5, 7 on the first 100 test claims, candidates in BM25 order, and again on the same candidates in a
# seeded random order (the listwise literature's robustness setting). Resumable: rerun after a kill (finished
# steps are skipped, LoRA runs continue with --resume, fidelity runs per claim). About 3 hours on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
C=runs/companions-smollm2-reranker
A=runs/agents
R=benchmarks/results
T=(--model smollm2-reranker --dtype bfloat16 --max-passage-words 30)

# Companions, as for the first target: heads and LoRA rankers on the target's own rankings of 100 training claims.
for method in medusa blockwise; do
    [ -f $C/$method/heads.json ] || rsd-rerank finetune --method $method "${T[@]}" --requests "$FIT" --queries 100 \
        --out $C/$method --resume
done
for method in first-ft rankzephyr-ft; do
    [ -f $C/$method/ranker.json ] || rsd-rerank finetune --method $method "${T[@]}" --bf16-autocast --requests "$FIT" \
        --queries 100 --out $C/$method --resume
done
# The paper's K-tied network on all 759 fitting claims (24 held out), Stage I.
resume=(); [ -f $A/smollm2-reranker-paper/train_state.pt ] && resume=(--resume)
[ -f $A/smollm2-reranker-paper/agent.json ] || rsd-rerank train "${T[@]}" --requests "$FIT" --batch-size 8 \
    --out $A/smollm2-reranker-paper --network paper --stage1-epochs 8 --rpo-epochs 0 --val-queries 24 "${resume[@]}"

# The same 100 test claims in a seeded random order (shuffle_order: a function of the seed and the qid).
SHUFFLED=data/scifact/test100-shuffled1.top20.jsonl
[ -f $SHUFFLED ] || .venv/bin/python - "$TEST" $SHUFFLED <<'EOF'
import json, sys
from rsd_rerank.difficulty import shuffle_order
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in list(src)[:100]:
        r = json.loads(line)
        order = shuffle_order(len(r["candidates"]), 1, str(r["query"]["qid"]))
        r["candidates"] = [r["candidates"][i] for i in order]
        out.write(json.dumps(r) + "\n")
EOF

for requests in "$TEST" $SHUFFLED; do
    stem=$R/paper-table-smollm2-reranker; [ "$requests" = $SHUFFLED ] && stem=$stem-shuffled
    .venv/bin/python benchmarks/fidelity.py --target smollm2-reranker --dtype bfloat16 --max-passage-words 30 \
        --requests "$requests" --queries 100 --budgets 1,3,5,7 \
        --agent rsd-jacobi=$A/smollm2-reranker-jacobi --agent rsd-paper=$A/smollm2-reranker-paper \
        --agent rsd-universal=$A/universal-families \
        --baselines sdm,blockwise,medusa,pdm,first-ft,rankzephyr-ft,first-sd,rsd-drafts \
        --ranker blockwise=$C/blockwise --ranker medusa=$C/medusa --ranker first-ft=$C/first-ft \
        --ranker rankzephyr-ft=$C/rankzephyr-ft --ranker first-sd=$C/first-ft \
        --ranker rsd-drafts=$A/smollm2-reranker-jacobi --out $stem
    .venv/bin/python benchmarks/plot_fidelity.py $stem.json --out $stem.png
done
