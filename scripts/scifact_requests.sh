# Sourced by the training scripts: the project's venv on PATH, and SciFact's BM25 top-20 request files
# (TRAIN: the 809 claims that are not test claims; TEST: the 300 test claims; FIT, VAL, FIT200: splits
# of TRAIN), made once.
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

# A seeded split of the 809 training claims: 50 held out for validation (the realistic target's model
# choice), the rest to fit; FIT200, its first 200, for the agents of that target.
FIT=data/scifact/train-fit.top20.jsonl
VAL=data/scifact/train-val.top20.jsonl
FIT200=data/scifact/train-fit200.top20.jsonl
[ -f "$VAL" ] || python - "$TRAIN" "$FIT" "$VAL" <<'PY'
import random, sys
lines = open(sys.argv[1]).read().splitlines(keepends=True)
held = set(random.Random(0).sample(range(len(lines)), 50))
open(sys.argv[2], "w").writelines(l for i, l in enumerate(lines) if i not in held)
open(sys.argv[3], "w").writelines(l for i, l in enumerate(lines) if i in held)
PY
[ -f "$FIT200" ] || head -n 200 "$FIT" > "$FIT200"
