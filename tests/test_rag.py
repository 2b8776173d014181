"""RSD where RAG builders rerank: LlamaIndex's node postprocessor and LangChain's document compressor,
with the real packages (the ``llamaindex`` and ``langchain`` extras), on the embedded model."""

from __future__ import annotations

import pytest

from rsd_rerank.integrations.rank_llm import TextReranker, rerank_windowed
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests

TEXTS = [
    "Vitamin D supplements reduce the risk of fractures in older adults.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Randomised trials of vitamin D show no effect on fracture risk in community-dwelling adults.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Bone mineral density is measured with dual-energy X-ray absorptiometry.",
]
QUERY = "Does vitamin D prevent fractures?"


@pytest.fixture(scope="module")
def expected(smollm2):
    """The order every door gives for these texts: ``rerank_windowed`` on one request."""
    return TextReranker(smollm2, method="gsd", budget=3, max_passage_words=30).order(QUERY, TEXTS)


def test_text_reranker_is_rerank_windowed_on_one_request(smollm2, expected):
    from dacite import from_dict
    from rank_llm.data import Request

    request = from_dict(
        data_class=Request,
        data={
            "query": {"qid": "q", "text": QUERY},
            "candidates": [{"docid": f"d{i}", "score": 1.0, "doc": {"text": t}} for i, t in enumerate(TEXTS)],
        },
    )
    ((reranked,),) = rerank_windowed(smollm2, [request], DecodingConfig("gsd", 3), PromptConfig(max_passage_words=30))
    assert [int(d[1:]) for d in reranked.docids] == expected
    assert sorted(expected) == list(range(len(TEXTS)))


def test_llamaindex_postprocessor_reorders_nodes(smollm2, expected):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rsd_rerank.integrations.llamaindex import RSDRerank

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(TEXTS)]
    reranker = RSDRerank(model=smollm2, method="gsd", budget=3, max_passage_words=30, top_n=3)
    out = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in expected[:3]]
    assert [n.score for n in out] == [5.0, 4.0, 3.0]
    assert reranker.postprocess_nodes([], QueryBundle(QUERY)) == []
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(nodes)


def test_langchain_compressor_reorders_documents(smollm2, expected):
    from langchain_core.documents import Document

    from rsd_rerank.integrations.langchain import RSDRerank

    docs = [Document(page_content=t, metadata={"source": i}) for i, t in enumerate(TEXTS)]
    compressor = RSDRerank(model=smollm2, method="gsd", budget=3, max_passage_words=30)
    out = compressor.compress_documents(docs, QUERY)
    assert [d.metadata["source"] for d in out] == expected
    assert [d.metadata["relevance_score"] for d in out] == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert docs[0].metadata == {"source": 0}  # the caller's documents are not touched


def test_bad_settings_fail_before_the_model_loads():
    with pytest.raises(ValueError, match="top_n"):
        TextReranker(model="no-such-model", top_n=0)
    with pytest.raises(ValueError):
        TextReranker(model="no-such-model", method="no-such-method")


def test_the_readme_example_requests_rerank_through_the_rag_path(smollm2):
    """Windows: 30 texts (more than one 20-wide window) still come back as a permutation."""
    request = read_requests("examples/requests.jsonl")[0]
    texts = [c.doc.get("contents") or c.doc.get("text") or "" for c in request.candidates] * 2
    order = TextReranker(smollm2, method="gsd", budget=1, max_passage_words=10).order(request.query.text, texts[:30])
    assert sorted(order) == list(range(min(30, len(texts))))


def test_llamaindexs_own_rankllm_wrapper_runs_rsd_by_model_path(smollm2, expected):
    """``RankLLMRerank(model="rsd:…")`` from ``llama-index-postprocessor-rankllm-rerank`` builds an
    ``RSDReranker`` through RankLLM's model factory inside ``rsd_model_paths``."""
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.rankllm_rerank import RankLLMRerank

    from rsd_rerank.integrations.rank_llm_cli import rsd_model_paths

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(TEXTS)]
    with rsd_model_paths(DecodingConfig("gsd", 3), device="cpu", dtype="float32"):
        out = RankLLMRerank(model="rsd:smollm2", top_n=5, batch_size=1).postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in expected]


def test_langchains_own_rankllm_wrapper_runs_rsd_as_its_client(smollm2, expected):
    """``langchain_community``'s ``RankLLMRerank`` takes a RankLLM ``client``: RankLLM's ``Reranker``
    around an ``RSDReranker`` runs RSD there."""
    import warnings

    from langchain_core.documents import Document
    from rank_llm.rerank.reranker import Reranker

    from rsd_rerank.integrations.rank_llm import RSDReranker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community announces its sunset
        from langchain_community.document_compressors.rankllm_rerank import RankLLMRerank

    client = Reranker(RSDReranker(smollm2, method="gsd", budget=3, max_passage_words=30))
    docs = [Document(page_content=t, metadata={"source": i}) for i, t in enumerate(TEXTS)]
    out = RankLLMRerank(client=client, top_n=5).compress_documents(docs, QUERY)
    assert [d.metadata["source"] for d in out] == expected
