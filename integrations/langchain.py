"""LangChain: ``RSDRerank``, a document compressor that reorders retrieved ``Document``s with RSD.

An optional extra (``pip install rsd-rerank[langchain]``). It plays the part of LangChain's own
``RankLLMRerank`` (``langchain_community.document_compressors``), which takes a RankLLM model name;
this one takes a target and RSD's decoding options, and goes through ``TextReranker`` (RankLLM's
prompts and windows, the batched engine), the path every other door takes. Use it in a
``ContextualCompressionRetriever`` as any compressor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import PrivateAttr

from rsd_rerank.integrations.rank_llm import TextReranker

__all__ = ["RSDRerank"]


class RSDRerank(BaseDocumentCompressor):
    """Reranks a query's retrieved documents with up-to-down speculative decoding.

    Takes ``TextReranker``'s settings: ``model``, ``method``, ``budget``, ``agent``, ``top_n``,
    ``template``, ``max_passage_words``, ``window_size``, ``stride``, ``device``, ``dtype``.

    Documents are taken in the order given (a retriever's, best first). Each comes back as a copy
    whose metadata gains ``relevance_score`` = ``len(documents) - rank``, strictly decreasing.
    """

    _reranker: TextReranker = PrivateAttr()

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self._reranker = TextReranker(**settings)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = [d.page_content for d in documents]
        kept = self._reranker.order(query, texts)
        return [
            Document(
                page_content=documents[i].page_content,
                metadata={**documents[i].metadata, "relevance_score": float(len(documents) - r)},
                id=documents[i].id,
            )
            for r, i in enumerate(kept)
        ]
