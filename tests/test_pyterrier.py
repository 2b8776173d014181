"""``bm25 % k >> RSD(...)`` in PyTerrier, offline: a retriever's frame in, the same rows reranked out."""

import pandas as pd
import pyterrier as pt
import pytest

from rsd_rerank.integrations.pyterrier import RSD
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.session import TargetSession


@pytest.fixture(scope="module")
def retrieved(requests_json):
    """A first-stage result frame, as a PyTerrier retriever gives it (BM25-like scores, rank from 0)."""
    rows = []
    for request in requests_json:
        for i, c in enumerate(request["candidates"]):
            rows.append(
                {
                    "qid": request["query"]["qid"],
                    "query": request["query"]["text"],
                    "docno": c["docid"],
                    "text": c["doc"]["text"],
                    "score": 30.0 - i,
                    "rank": i,
                    "source": "bm25",
                }
            )
    return pd.DataFrame(rows)


def test_cutoff_then_rsd_reranks_each_querys_top(tiny_llama, retrieved):
    bm25 = pt.Transformer.from_df(retrieved)
    pipeline = bm25 % 10 >> RSD(tiny_llama, DecodingConfig("gsd", 10))
    topics = retrieved[["qid", "query"]].drop_duplicates()
    out = pipeline.transform(topics)
    assert list(out.columns) == list(retrieved.columns)
    for qid, group in out.groupby("qid", sort=False):
        first = retrieved[retrieved["qid"] == qid].head(10)
        assert sorted(group["docno"]) == sorted(first["docno"])
        assert list(group["rank"]) == list(range(10)) and group["score"].is_monotonic_decreasing
        assert group["score"].nunique() == 10 and set(group["source"]) == {"bm25"}
        # With T = K the order is the target's own greedy ranking of those ten passages.
        session = TargetSession(tiny_llama, first["query"].iloc[0], list(first["text"]), PromptConfig())
        assert list(group["docno"]) == [first["docno"].iloc[i] for i in session.greedy_ranking()]


def test_a_frame_without_text_is_refused(tiny_llama, retrieved):
    with pytest.raises(ValueError, match="the frame lacks text.*pt.text.get_text"):
        RSD(tiny_llama).transform(retrieved.drop(columns=["text"]))
