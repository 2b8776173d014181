#!/usr/bin/env bash
# The content-driven successor of smollm2-reranker (issue #30), from scratch (resumable: run it again after a kill).
# The target shipped today was made by scripts/train_reranker_v1.sh.
# SmolLM2-135M-Instruct + LoRA (r 16, every layer), three epochs over 759 SciFact training claims (BM25
# top 20, 30-word passages), candidates reshuffled every epoch, lists of 5, then 10, then 20 candidates,
# of which 3, then 5, then 0 are other claims' passages (easy lists first);
# ListMLE on the identifier logits at every slot + 0.1 x next-token loss; teacher: reciprocal-rank fusion
# of BM25 and wordllama similarity (rsd_rerank/training/reranker.py says why). A learning curve on 12 of
# the 50 held-out training claims every 250 steps (runs/smollm2-reranker/curve.jsonl); the test claims are
# never seen. Then ship the chosen adapter into the package:
#   python scripts/ship_reranker.py runs/smollm2-reranker/adapter --step 2277
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
OUT=${OUT:-runs/smollm2-reranker}
VAL12=data/scifact/train-val12.top20.jsonl
[ -f "$VAL12" ] || head -n 12 "$VAL" > "$VAL12"

[ -f "$OUT/ranker.json" ] || rsd-rerank finetune --method reranker --model smollm2 --requests "$FIT" \
    --val-requests "$VAL12" --validate-every 250 --snapshot-every 250 \
    --max-passage-words 30 --epochs 3 --list-sizes 5,10,20 --foreign 3,5,0 --teacher fusion --loss listmle --lm-weight 0.1 \
    --lr 1e-3 --lora-rank 16 --bf16-autocast --save-every 25 --seed 0 --out "$OUT" --resume
