"""BM25 → rerank the top k → TREC run → ir-measures next to BM25: the work behind ``rsd-rerank pipeline``.

The run is rewritten atomically after every query, so ``resume`` continues an interrupted run;
beyond one window (20 candidates) RankLLM's sliding windows rank the list through ``RSDReranker``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rsd_rerank.integrations.measures import evaluate
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, rank_scores, read_run, rerank_requests, write_run
from rsd_rerank.targets import Target

__all__ = ["PipelineResult", "candidate_requests", "pipeline"]

log = logging.getLogger(__name__)


def candidate_requests(index: str | os.PathLike, topics: dict[str, str], hits: int, depth: int):
    """BM25 runs ``{qid: [(docid, score)…]}`` and RankLLM requests of each query's top ``depth`` hits."""
    from dacite import from_dict
    from rank_llm.data import Request

    from rsd_rerank.integrations.pyserini import bm25, request_dicts

    runs = bm25(index, topics, hits)
    empty = [qid for qid, found in runs.items() if not found]
    if empty:
        log.warning("%d queries have no BM25 hits and are left out: %s", len(empty), ", ".join(empty[:10]))
    return runs, [from_dict(data_class=Request, data=r) for r in request_dicts(index, runs, topics, depth)]


@dataclass(frozen=True)
class PipelineResult:
    """What ``pipeline`` did: queries reranked now and before (resume), and metrics next to BM25."""

    reranked: int
    resumed: int
    metrics: dict[str, dict[str, float]] | None
    unjudged: list[str]


def _resumable(output: Path, tag: str, index, topics: dict[str, str], hits: int) -> dict:
    """The queries of an existing run that ``--resume`` may keep: checked before any work starts.

    Raises:
        ValueError: a malformed line (named by ``read_run``), or a run of another method or budget.
    """
    from rsd_rerank.integrations.pyserini import bm25

    run = read_run(output)
    if run.tags and run.tags != {tag}:
        raise ValueError(
            f"{output} is a run of {', '.join(sorted(run.tags))}, not {tag}: --resume continues the same "
            "method and budget; choose another --output"
        )
    # A query is done when it has every hit BM25 gives it (a killed write never leaves half a query,
    # but a run cut by hand or by another tool may): the others are reranked again.
    found = bm25(index, {q: topics[q] for q in run.hits if q in topics}, hits) if run.hits else {}
    # Queries outside these topics are kept as they are: rewriting the run must not lose them.
    done = {q: h for q, h in run.hits.items() if q not in found or len(h) == len(found[q])}
    short = sorted(set(run.hits) & set(found) - set(done))
    if short:
        log.warning(
            "%d queries of %s are incomplete and are reranked again: %s", len(short), output, ", ".join(short[:10])
        )
    return done


def pipeline(
    target: Target,
    index: str | os.PathLike,
    topics: dict[str, str],
    qrels: list | None,
    output: str | os.PathLike,
    decoding: DecodingConfig,
    prompt: PromptConfig,
    hits: int = 100,
    rerank_top: int = 20,
    resume: bool = False,
    batching: BatchConfig = BatchConfig(),
) -> PipelineResult:
    """Retrieve, rerank the top ``rerank_top`` of each query, write the run after every batch of queries.

    The run keeps all ``hits`` per query: the reranked top k, then BM25's order below it.

    Raises:
        ValueError: ``output`` exists and ``resume`` is off (nothing written is ever overwritten
            silently), or ``rerank_top`` < 1.
    """
    from rsd_rerank.integrations.pyserini import bm25
    from rsd_rerank.integrations.rank_llm import RSDReranker

    output = Path(output)
    if rerank_top < 1 or hits < rerank_top:
        raise ValueError(f"need 1 <= --rerank-top <= --hits, got {rerank_top} and {hits}")
    if output.exists() and not resume:
        raise ValueError(f"{output} exists; pass --resume to continue it or choose another --output")
    tag = decoding.run_tag
    done = _resumable(output, tag, index, topics, hits) if output.exists() else {}
    todo = {q: t for q, t in topics.items() if q not in done}
    runs, requests = candidate_requests(index, todo, hits, rerank_top) if todo else ({}, [])
    windows = None
    if rerank_top > 20:  # RankLLM's sliding windows (20, stride 10), as RankLLM users run them
        windows = RSDReranker(
            target,
            method=decoding.method,
            budget=decoding.budget,
            agent=decoding.agent,
            context_size=prompt.context_size,
            max_passage_words=prompt.max_passage_words,
            prompt_template_path=prompt.template,
            batch_size=batching.batch_size,
            max_batch_tokens=batching.max_batch_tokens,
        )
    run = dict(done)
    bar = tqdm(total=len(requests), desc=tag, unit="query")
    for start in range(0, len(requests), batching.batch_size):
        chunk = requests[start : start + batching.batch_size]
        if windows is None:
            orders = [r.docids for batch in rerank_requests(target, chunk, decoding, prompt, batching) for r in batch]
        else:
            orders = [
                [c.docid for c in result.candidates] for result in windows.rerank_batch(chunk, rank_end=rerank_top)
            ]
        for request, order in zip(chunk, orders, strict=True):
            qid = str(request.query.qid)
            reranked = set(order)
            run[qid] = rank_scores(order + [d for d, _ in runs[qid] if d not in reranked])
        write_run(output, run, tag)
        bar.update(len(chunk))
    bar.close()
    metrics, unjudged = None, []
    evaluated = evaluate(qrels, {qid: dict(found) for qid, found in run.items()})
    if evaluated is not None:
        reranked_metrics, unjudged = evaluated
        # BM25 beside it over the same queries; those resumed from the run file are searched again.
        bm25_runs = {**(bm25(index, {q: topics[q] for q in done if q in topics}, hits) if done else {}), **runs}
        bm25_metrics, _ = evaluate(qrels, {q: dict(found) for q, found in bm25_runs.items() if q in run})
        metrics = {"BM25": bm25_metrics, tag: reranked_metrics}
    return PipelineResult(len(requests), len(done), metrics, unjudged)
