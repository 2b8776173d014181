#!/usr/bin/env bash
# The smollm2-reranker shipped today (the first recipe: one epoch of next-token SFT; content-blind, see README),
# from scratch (resumable: run it again after a kill). Its successor's recipe is scripts/train_reranker.sh.
# SmolLM2-135M-Instruct + LoRA (r 16, every layer), one epoch of RankZephyr-style SFT over 759 SciFact
# training claims (BM25 top 20, candidates shuffled, 30-word passages), wordllama similarity as the
# teacher (rsd_rerank/training/reranker.py says why). 50 other training claims are held out for
# validation; the test claims are never seen. Then copy the adapter into the package:
#   cp runs/smollm2-reranker/adapter/* rsd_rerank/rerankers/smollm2-reranker/
source "$(dirname "${BASH_SOURCE[0]}")/scifact_requests.sh"
OUT=${OUT:-runs/smollm2-reranker-v1}

[ -f "$OUT/ranker.json" ] || rsd-rerank finetune --method reranker --model smollm2 --requests "$FIT" \
    --max-passage-words 30 --epochs 1 --lr 5e-4 --lora-rank 16 --bf16-autocast \
    --save-every 25 --snapshot-every 250 --seed 0 --out "$OUT" --resume

# Model choice on the held-out training claims (benchmarks/results/reranker-validation/), then shipping:
#   (made with benchmarks/difficulty.py --adapter DIR, since folded into `rsd-rerank difficulty --model DIR`)
#   for s in 250 500; do rsd-rerank difficulty --model "$OUT/snapshots/step-$s" --requests "$VAL" \
#       --queries 8 --max-passage-words 30 --dtype bfloat16 --out benchmarks/results/reranker-validation/difficulty-step$s; done
#   rsd-rerank difficulty --model "$OUT/adapter" ... --out benchmarks/results/reranker-validation/difficulty-step759
#   python scripts/ship_reranker.py "$OUT/adapter" --step 759
# The shipped target's figures on SciFact test claims (candidates in BM25 order, as users' requests come):
#   rsd-rerank difficulty --model smollm2-reranker --requests "$TEST" --queries 100 \
#       --max-passage-words 30 --dtype bfloat16 --out benchmarks/results/difficulty-smollm2-reranker
#   rsd-rerank compare --model smollm2-reranker --dtype bfloat16 --max-passage-words 30 --requests "$TEST" \
#       --qrels ../shared/data/beir-scifact/qrels.beir-v1.0.0-scifact.test.txt --methods greedy \
#       --out benchmarks/results/ndcg-smollm2-reranker
#   python benchmarks/fidelity.py --target smollm2-reranker --dtype bfloat16 --max-passage-words 30 --queries 50 \
#       --agent rsd-smollm2=smollm2 --agent rsd-random-llama=random-llama --baselines sdm,pdm \
#       --out benchmarks/results/fidelity-smollm2-reranker
