"""RSDReranker inside RankLLM's own Reranker: sliding windows, permutation repair, DataWriter output."""

import copy

import pytest
from rank_llm.data import Candidate, DataWriter, Query, Request
from rank_llm.rerank.reranker import Reranker

from rsd_rerank.integrations.rank_llm import RSDReranker
from rsd_rerank.session import TargetSession


@pytest.fixture(scope="module")
def long_request(requests_json):
    # 30 candidates: both example queries' passages under one query, so windows [10, 30) then [0, 20) run.
    docs = [c for r in requests_json for c in r["candidates"]][:30]
    return Request(
        query=Query(text=requests_json[0]["query"]["text"], qid="q30"),
        candidates=[Candidate(docid=c["docid"], score=1.0, doc=c["doc"]) for c in docs],  # tied first-stage scores
    )


def _windows_by_hand(target, request, window=20, stride=10):
    """RankLLM's sliding windows, back to front, each window ordered by the target's greedy ranking."""
    candidates = list(request.candidates)
    end = len(candidates)
    start = max(end - window, 0)
    while True:
        chunk = candidates[start:end]
        session = TargetSession(target, request.query.text, [c.doc for c in chunk])
        candidates[start:end] = [chunk[i] for i in session.greedy_ranking()]
        if start == 0:
            return [c.docid for c in candidates]
        end -= stride
        start = max(start - stride, 0)


@pytest.mark.parametrize(("method", "budget"), [("gsd", 20), ("rsd", 20), ("greedy", 0)])
def test_reranker_windows_equal_the_greedy_target(tiny_llama, long_request, tmp_path, method, budget):
    reranker = Reranker(RSDReranker(tiny_llama, method=method, budget=budget))
    (result,) = reranker.rerank_batch([copy.deepcopy(long_request)], rank_end=100, populate_invocations_history=True)
    assert [c.docid for c in result.candidates] == _windows_by_hand(tiny_llama, long_request)
    assert len(result.invocations_history) == 2  # windows [10, 30) and [0, 20)
    usage = result.invocations_history[0].token_usage
    assert usage["method"] == method and usage["prompt_tokens"] > 0
    if method in ("gsd", "rsd"):
        assert usage["accepted"][-1] == 20 and usage["passes"] <= 20

    run = tmp_path / "run.trec"
    DataWriter([result]).write_in_trec_eval_format(str(run))
    lines = [line.split() for line in run.read_text().splitlines()]
    assert sorted(line[2] for line in lines) == sorted(c.docid for c in long_request.candidates)
    scores = [float(line[4]) for line in lines]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))


def test_embedded_model_default_is_rsd_drafts_with_its_bundled_agent(smollm2, requests_json):
    request = Request(
        query=Query(**requests_json[1]["query"]),
        candidates=[Candidate(**c) for c in requests_json[1]["candidates"]],
    )
    reranker = RSDReranker(smollm2, budget=2)
    assert reranker._decoding.method == "rsd-drafts"
    (result,) = Reranker(reranker).rerank_batch([request], rank_end=20, populate_invocations_history=True)
    assert sorted(c.docid for c in result.candidates) == sorted(c.docid for c in request.candidates)
    usage = result.invocations_history[0].token_usage
    assert usage["passes"] == 2 and usage["method"] == "rsd-drafts"


def test_adapter_input_errors(tiny_llama, long_request):
    with pytest.raises(ValueError, match="window_size must be 1..26"):
        RSDReranker(tiny_llama, window_size=30)
    bad = copy.deepcopy(long_request)
    bad.candidates.append(copy.deepcopy(bad.candidates[3]))
    with pytest.raises(ValueError, match="duplicate docid"):
        RSDReranker(tiny_llama).rerank_batch([bad])


def test_the_ith_windows_of_every_request_are_decoded_together(tiny_llama, long_request):
    # Three requests of 30, 25 and 12 candidates: windows [10,30) [5,25) [0,12) go in one batch, then
    # [0,20) [0,15); a request's windows stay sequential. The result equals one request at a time.
    requests = [copy.deepcopy(long_request) for _ in range(3)]
    requests[1].candidates = requests[1].candidates[:25]
    requests[2].candidates = requests[2].candidates[:12]
    batched = RSDReranker(tiny_llama, method="gsd", budget=3, batch_size=8).rerank_batch(
        requests, rank_end=100, populate_invocations_history=True
    )
    alone = RSDReranker(tiny_llama, method="gsd", budget=3)
    for request, result in zip(requests, batched, strict=True):
        (single,) = alone.rerank_batch([copy.deepcopy(request)], rank_end=100)
        assert [c.docid for c in result.candidates] == [c.docid for c in single.candidates]
    sizes = [[inv.token_usage["batch"] for inv in r.invocations_history] for r in batched]
    assert sizes == [[3, 2], [3, 2], [3]]
