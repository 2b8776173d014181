"""RSDReranker against RankLLM's contract for any ``ListwiseRankLLM``.

Parts are ported from RankLLM's own listwise tests (castorini/rank_llm, ``test/rerank/listwise/``):
``test_count_windows.py`` (windows walked), ``test_RankListwiseOSLLM.py`` (``create_prompt`` over
start/end pairs, stride validation), ``test_rerank_async.py`` (concurrent ``rerank_async``) and
``test_invocation_history.py`` (history read back by ``ResponseAnalyzer``), adapted to a real
``RSDReranker`` on a tiny random Llama instead of mocked vLLM handlers.
"""

import asyncio
import copy
import re

import pytest
from rank_llm.analysis.response_analysis import ResponseAnalyzer
from rank_llm.data import Candidate, Query, Request, Result
from rank_llm.rerank.listwise.listwise_rankllm import ListwiseRankLLM

from rsd_rerank.integrations.rank_llm import RSDReranker
from rsd_rerank.prompt import NUMERIC_TEMPLATE


def _request(requests_json, n, qid="q", tied=False):
    docs = [c for r in requests_json for c in r["candidates"]]
    return Request(
        query=Query(text=requests_json[0]["query"]["text"], qid=qid),
        candidates=[
            Candidate(
                docid=f"{docs[i % len(docs)]['docid']}-{i}",
                score=1.0 if tied else float(n - i),
                doc=docs[i % len(docs)]["doc"],
            )
            for i in range(n)
        ],
    )


@pytest.fixture(scope="module")
def reranker(tiny_llama):
    return RSDReranker(tiny_llama, method="gsd", budget=3, batch_size=4)


@pytest.mark.parametrize(
    ("n", "rank_start", "expected"),
    [(25, 0, 2), (30, 5, 2), (8, 0, 1), (40, 0, 3)],  # RankLLM's test_count_windows cases
)
def test_windows_walked_are_the_ones_rankllm_counts(reranker, requests_json, n, rank_start, expected):
    assert ListwiseRankLLM._count_windows(n, rank_start, 100, 20, 10) == expected
    (result,) = reranker.rerank_batch(
        [_request(requests_json, n)], rank_start=rank_start, rank_end=100, populate_invocations_history=True
    )
    assert len(result.invocations_history) == expected


def test_create_prompt_lists_the_window_rankllm_asks_for(tiny_llama):
    # RankLLM's test_create_prompt: (start, end) pairs over 4 candidates, numeric template, window 5.
    numeric = RSDReranker(tiny_llama, prompt_template_path=NUMERIC_TEMPLATE, window_size=5, stride=3)
    result = Result(
        query=Query(text="Sample Query", qid="q1"),
        candidates=[
            Candidate(docid=f"d{i}", score=0.5, doc={"contents": "Title: Sample Title Content: Sample Text"})
            for i in range(1, 5)
        ],
    )
    for start, end in [(1, 3), (2, 4), (3, 5), (5, 6)]:
        prompt, length = numeric.create_prompt(result, start, end)
        user = next(m["content"] for m in prompt if m["role"] == "user")
        assert int(re.search(r"\d+", user).group()) == max(min(end, 4) - max(0, start), 0)
        assert length > 0


def test_stride_beyond_the_window_is_refused_as_rankllm_refuses_it(tiny_llama):
    with pytest.raises(ValueError, match="stride must satisfy 0 < stride <= window_size"):
        RSDReranker(tiny_llama, window_size=5, stride=6)


def test_an_empty_request_in_a_batch_gives_an_empty_result(reranker, requests_json):
    requests = [
        _request(requests_json, 12, "a"),
        Request(query=Query(text="q", qid="empty"), candidates=[]),
        _request(requests_json, 7, "b"),
    ]
    results = reranker.rerank_batch(requests, rank_end=100)
    assert [r.query.qid for r in results] == ["a", "empty", "b"]
    assert results[1].candidates == []
    for request, result in zip([requests[0], requests[2]], [results[0], results[2]], strict=True):
        (alone,) = reranker.rerank_batch([request], rank_end=100)
        assert [c.docid for c in result.candidates] == [c.docid for c in alone.candidates]


def test_async_goes_through_the_sync_path(reranker, requests_json):
    requests = [_request(requests_json, 25, "a", tied=True), _request(requests_json, 9, "b", tied=True)]
    kwargs = {"rank_end": 100, "populate_invocations_history": True}
    sync = reranker.rerank_batch(copy.deepcopy(requests), **kwargs)
    asynchronous = asyncio.run(reranker.rerank_batch_async(copy.deepcopy(requests), **kwargs))
    for a, b in zip(sync, asynchronous, strict=True):
        assert [(c.docid, c.score) for c in a.candidates] == [(c.docid, c.score) for c in b.candidates]
        assert [i.response for i in a.invocations_history] == [i.response for i in b.invocations_history]
    scores = [c.score for c in asynchronous[0].candidates]  # tied first-stage scores are untied
    assert all(x > y for x, y in zip(scores, scores[1:], strict=False))

    # RankLLM's test_rerank_async: concurrent rerank_async calls on one instance, same results.
    async def both():
        return await asyncio.gather(*(reranker.rerank_async(copy.deepcopy(r), rank_end=100) for r in requests))

    for a, b in zip(sync, asyncio.run(both()), strict=True):
        assert [c.docid for c in a.candidates] == [c.docid for c in b.candidates]

    duplicate = copy.deepcopy(requests[1])
    duplicate.candidates.append(copy.deepcopy(duplicate.candidates[0]))
    with pytest.raises(ValueError, match="duplicate docid"):
        asyncio.run(reranker.rerank_batch_async([duplicate]))


def test_run_llm_takes_k_from_the_prompt(reranker, requests_json):
    result = Result(
        query=copy.deepcopy(_request(requests_json, 4).query), candidates=_request(requests_json, 4).candidates
    )
    prompt, _ = reranker.create_prompt(result, 0, 4)
    text, _, usage = reranker.run_llm(prompt)
    assert sorted(re.findall(r"\[([A-Z])\]", text)) == ["A", "B", "C", "D"] and usage["passes"] <= 3
    with pytest.raises(ValueError, match="current_window_size is 20 but the prompts list \\[4\\]"):
        reranker.run_llm(prompt, current_window_size=20)
    assert len(reranker.run_llm_batched([prompt, prompt])) == 2


def test_history_is_off_by_default_and_scores_outside_the_range_are_rankllms(reranker, requests_json):
    request = _request(requests_json, 10)
    (result,) = reranker.rerank_batch([copy.deepcopy(request)], rank_start=2, rank_end=6)
    assert result.invocations_history == []
    before, after = request.candidates, result.candidates
    assert [(c.docid, c.score) for c in after[:2] + after[6:]] == [(c.docid, c.score) for c in before[:2] + before[6:]]
    assert {c.docid for c in after[2:6]} == {c.docid for c in before[2:6]}
    inside = [c.score for c in after[2:6]]
    assert all(x > y for x, y in zip(inside, inside[1:], strict=False)) and inside[-1] > after[6].score


@pytest.mark.parametrize("template", [None, NUMERIC_TEMPLATE])
def test_response_analyzer_reads_rsd_results(tiny_llama, requests_json, template):
    # RankLLM's test_invocation_history: the recorded history is what ResponseAnalyzer reads.
    options = {} if template is None else {"prompt_template_path": template}
    reranker = RSDReranker(tiny_llama, method="gsd", budget=2, **options)
    results = reranker.rerank_batch([_request(requests_json, 25)], rank_end=100, populate_invocations_history=True)
    analyzer = ResponseAnalyzer.from_inline_results(results, use_alpha=template is None)
    responses, passages, *_ = analyzer.read_responses()
    assert passages == [20, 15] and len(responses) == 2
    assert analyzer.count_errors() == {"ok": 2, "wrong_format": 0, "repetition": 0, "missing_documents": 0}


def test_concurrent_async_callers_share_one_model_slot(reranker, requests_json, monkeypatch):
    """As RankLLM caps the LLM work per instance: callers queue for the model, never overlap on it, and
    get what they would get one after the other."""
    import threading
    import time

    from rsd_rerank.session.forward import Forward

    requests = [_request(requests_json, 12, f"c{i}") for i in range(3)]
    sequential = [reranker.rerank_batch([copy.deepcopy(r)], rank_end=100)[0] for r in requests]
    inside, overlaps, guard = [0], [], threading.Lock()
    forward = Forward.__call__

    def watched(self, *args, **kwargs):
        with guard:
            inside[0] += 1
            overlaps.append(inside[0])
        time.sleep(0.01)  # room for another thread to enter, were it let in
        try:
            return forward(self, *args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(Forward, "__call__", watched)

    async def together():
        return await asyncio.gather(*(reranker.rerank_async(copy.deepcopy(r), rank_end=100) for r in requests))

    concurrent = asyncio.run(together())
    assert overlaps and max(overlaps) == 1
    for a, b in zip(sequential, concurrent, strict=True):
        assert [c.docid for c in a.candidates] == [c.docid for c in b.candidates]
