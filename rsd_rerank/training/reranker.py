"""The data of the shipped realistic target, ``smollm2-reranker``: SmolLM2-135M-Instruct fine-tuned as a
listwise reranker (RankZephyr-style SFT on the whole ranking) on SciFact training claims.

Two choices make it hard in the ways a real reranker is (``shared/targets.md``):

- **Candidates are shuffled** (seeded per query) before the prompt is built, so identifier order
  carries no signal and the model must read the passages to rank them.
- **The teacher is content, not BM25.** Each training ranking orders the candidates by the cosine
  similarity of the query and the passage *as the prompt shows it* (RankLLM's truncation to the
  prompt's word limit) under ``wordllama``'s 256-d static embeddings, which ship inside its wheel (no
  hub). Its order has Kendall tau 0.25 to BM25's on SciFact's test claims: a target taught BM25's
  order would copy the identifier order of BM25-ordered requests and be easy again, while a
  BM25 + embedding fusion sits too close to BM25 for the same reason.

The LoRA training loop itself is the fine-tuned baselines' (``training.baselines``): resumable,
seeded, checkpointed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

__all__ = ["shuffled_requests", "similarity_rankings"]


def shuffled_requests(requests: Sequence, seed: int) -> list:
    """Each request with its candidates in a seeded random order (the order is a function of seed and qid)."""
    out = []
    for request in requests:
        order = list(range(len(request.candidates)))
        random.Random(f"{seed}:{request.query.qid}").shuffle(order)
        out.append(dataclasses.replace(request, candidates=[request.candidates[i] for i in order]))
    return out


@cache
def _wordllama():
    """wordllama's bundled 256-d model, loaded from its own wheel (its default lookup would try the network)."""
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as err:
        raise ValueError(
            "finetune --method reranker needs the wordllama package (its teacher); pip install wordllama"
        ) from err
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def similarity_rankings(query_texts: Sequence[str], passages: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Per query, its passages' indices by decreasing wordllama cosine similarity to the query (ties: lower index first)."""
    model = _wordllama()
    out = []
    for query, texts in zip(query_texts, passages, strict=True):
        scores = [score for _, score in model.rank(query, list(texts), sort=False)]
        out.append(torch.tensor(sorted(range(len(texts)), key=lambda i: (-scores[i], i))))
    return out
