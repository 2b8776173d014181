#!/usr/bin/env bash
# The content-driven successor of smollm2-reranker (issue #30): recipe E, from scratch (resumable: run it
# again after a kill). The target shipped today was made by scripts/train_reranker_v1.sh; recipes A to D
# (benchmarks/results/reranker-recipes/) learned no content that lasted to lists of 20.
#
# SmolLM2-135M-Instruct + LoRA (r 32, every layer), 759 SciFact training claims (BM25 top 20, 30-word
# passages), candidates reshuffled every epoch, 8 lists an Adam step (lr 5e-4), ListMLE on the identifier
# logits at every scored slot + 0.1 x next-token loss (not on the unscored slots' identifiers), teacher:
# reciprocal-rank fusion of BM25 and wordllama similarity. A curriculum, one epoch each:
#   1. lists of 5: the claim's best passage (by the teacher) among 4 of other claims', starting with the
#      claim itself (an exact match: forms the circuit that reads a passage and writes its identifier);
#   2. the same without the cue (own topic against other topics: 88 % right on held-out claims in recipe D);
#   3. lists of 20, the test lists' shape: the claim's 10 best passages, in the teacher's order, among 10 of
#      other claims' (never only its own: recipe D's epoch of own lists sat at chance and undid epoch 2).
# A learning curve on 12 of the 50 held-out training claims every 400 lists (runs/smollm2-reranker/curve.jsonl);
# the test claims are never seen. Then ship the chosen snapshot and measure it:
#   STEP=N bash scripts/evaluate_reranker.sh
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
OUT=${OUT:-runs/smollm2-reranker}
VAL12=data/scifact/train-val12.top20.jsonl
[ -f "$VAL12" ] || head -n 12 "$VAL" > "$VAL12"

[ -f "$OUT/ranker.json" ] || rsd-rerank finetune --method reranker --model smollm2 --requests "$FIT" \
    --val-requests "$VAL12" --validate-every 400 --snapshot-every 400 \
    --max-passage-words 30 --epochs 3 --list-sizes 5,5,20 --foreign 4,4,10 --cue 1,0 \
    --teacher fusion --loss listmle --lm-weight 0.1 --lr 5e-4 --lora-rank 32 --accumulate 8 \
    --bf16-autocast --save-every 40 --seed 0 --out "$OUT" --resume
