"""LlamaIndex: ``RSDRerank``, a node postprocessor that reorders retrieved ``NodeWithScore``s with RSD.

An optional extra (``pip install rsd-rerank[llamaindex]``). It plays the part of LlamaIndex's own
``RankLLMRerank`` (``llama-index-postprocessor-rankllm-rerank``), which takes a RankLLM model name;
this one takes a target and RSD's decoding options, and goes through ``TextReranker`` (RankLLM's
prompts and windows, the batched engine), the path every other door takes.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rsd_rerank.integrations.rank_llm import TextReranker

__all__ = ["RSDRerank"]


class RSDRerank(BaseNodePostprocessor):
    """Reranks a query's retrieved nodes with up-to-down speculative decoding.

    Takes ``TextReranker``'s settings: ``model``, ``method``, ``budget``, ``agent``, ``top_n``,
    ``template``, ``max_passage_words``, ``window_size``, ``stride``, ``device``, ``dtype``.

    Nodes are taken in the order given (a retriever's, best first); each comes back with score
    ``len(nodes) - rank``, strictly decreasing.
    """

    _reranker: TextReranker = PrivateAttr()

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self._reranker = TextReranker(**settings)

    @classmethod
    def class_name(cls) -> str:
        return "RSDRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RSDRerank needs the query: pass query_bundle (or query_str) to postprocess_nodes")
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        kept = self._reranker.order(query_bundle.query_str, texts)
        return [NodeWithScore(node=nodes[i].node, score=float(len(nodes) - r)) for r, i in enumerate(kept)]
