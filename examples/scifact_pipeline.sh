#!/usr/bin/env bash
# Pyserini BM25 → RSD → TREC run → nDCG on BEIR SciFact, offline (after `bash scripts/setup.sh`).
# 20 test claims with the embedded SmolLM2 take a few minutes on 2 CPU cores; drop --queries for all 300.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
[ -d indexes/beir-scifact ] || rsd-rerank index --dataset beir/scifact --index indexes/beir-scifact
rsd-rerank pipeline --index indexes/beir-scifact --dataset beir/scifact/test --queries 20 \
    --hits 100 --rerank-top 20 --method rsd --budget 5 --output runs/scifact.rsd5.trec --resume
