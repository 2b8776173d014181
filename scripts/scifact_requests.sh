# Sourced by the training scripts: the project's venv on PATH, and SciFact's BM25 top-20 request files
# (TRAIN: the 809 claims that are not test claims; TEST: the 300 test claims), made once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
INDEX=indexes/beir-scifact
TRAIN=data/scifact/train.top20.jsonl
TEST=data/scifact/test.top20.jsonl

[ -d "$INDEX" ] || rsd-rerank index --dataset beir/scifact --index "$INDEX"
[ -f "$TRAIN" ] || rsd-rerank retrieve --index "$INDEX" --dataset beir/scifact --exclude beir/scifact/test \
    --hits 100 --output runs/bm25.scifact-train.trec --requests "$TRAIN"
[ -f "$TEST" ] || rsd-rerank retrieve --index "$INDEX" --dataset beir/scifact/test \
    --hits 100 --output runs/bm25.scifact-test.trec --requests "$TEST"
