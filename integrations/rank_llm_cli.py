"""RankLLM's own command line, running RSD: ``rsd-rerank rank-llm [decoding options] rerank --model-path rsd:TARGET …``.

RankLLM picks a model class from a substring of ``--model-path`` and falls back to a vLLM class,
which cannot load here. This route runs RankLLM's ``rank_llm.cli.main.main`` unchanged, except that
``Reranker.create_model_coordinator`` answers a ``--model-path`` of ``rsd:<target>`` (``rsd:`` alone:
the embedded SmolLM2; any name ``rsd-rerank --model`` takes) with an ``RSDReranker`` built from
RankLLM's own options (template, window size, stride, context size, passage words, batch size)
and this command's decoding options. Pyserini is imported first through this project's fix (Java,
JVM options, the prebuilt-index catalog offline), since RankLLM's retrieval imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import DEFAULT_TEMPLATE

__all__ = ["PREFIX", "run_rank_llm"]

PREFIX = "rsd:"
"""``--model-path`` prefix that selects ``RSDReranker``."""


@contextlib.contextmanager
def rsd_model_paths(decoding: DecodingConfig, device: str, dtype: str) -> Iterator[None]:
    """Inside the block, RankLLM's model factory builds an ``RSDReranker`` for ``rsd:<target>`` paths."""
    from rank_llm.rerank.reranker import Reranker

    from rsd_rerank.integrations.rank_llm import RSDReranker

    original = Reranker.create_model_coordinator

    def create_model_coordinator(model_path: str, default_model_coordinator: Any, interactive: bool, **kwargs: Any):
        if not str(model_path).startswith(PREFIX):
            return original(model_path, default_model_coordinator, interactive, **kwargs)
        template = kwargs.get("prompt_template_path") or DEFAULT_TEMPLATE
        return RSDReranker(
            str(model_path)[len(PREFIX) :] or None,
            prompt_template_path=str(template),
            method=decoding.method,
            budget=decoding.budget,
            agent=decoding.agent,
            ranker=decoding.ranker,
            window_size=kwargs.get("window_size", 20),
            stride=kwargs.get("stride", 10),
            context_size=kwargs.get("context_size", 4096),
            max_passage_words=kwargs.get("max_passage_words", 300),
            device=device,
            dtype=dtype,
            batch_size=kwargs.get("batch_size", 1),
        )

    Reranker.create_model_coordinator = staticmethod(create_model_coordinator)
    try:
        yield
    finally:
        Reranker.create_model_coordinator = original


def run_rank_llm(argv: Sequence[str], decoding: DecodingConfig, device: str = "auto", dtype: str = "auto") -> int:
    """RankLLM's CLI on ``argv`` (e.g. ``["rerank", "--model-path", "rsd:random-llama", …]``); its exit code."""
    from rank_llm.cli.main import main

    from rsd_rerank.integrations.pyserini import lucene

    lucene()  # Java, the JVM options and the offline catalog, before RankLLM imports Pyserini
    with rsd_model_paths(decoding, device, dtype):
        return main(list(argv))
