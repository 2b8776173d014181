"""BM25 → rerank the top k → TREC run → ir-measures next to BM25: the work behind ``rsd-rerank pipeline``.

The run is rewritten atomically after every batch of queries, so ``resume`` continues an interrupted
run; beyond one window (20 candidates) RankLLM's sliding windows rank the list through
``RSDReranker``. ``rerank_into_run`` is shared with ``rsd-rerank rerank`` (request files and any
retriever's run files).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from rsd_rerank.files import discard_staging, run_destination, swap_in
from rsd_rerank.integrations.measures import evaluate
from rsd_rerank.integrations.rank_llm import Reranked, rerank_windowed
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, Hits, WindowConfig, rank_scores, read_run, write_run
from rsd_rerank.targets import Target

if TYPE_CHECKING:
    from rsd_rerank.integrations.scale import Workers

__all__ = [
    "PipelineResult",
    "candidate_requests",
    "kept_in_place",
    "pipeline",
    "rerank_into_run",
    "reranked_batches",
    "resumable",
]

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


def resumable(output: Path, tag: str, expected: Callable[[set[str]], dict[str, int]]) -> dict[str, Hits]:
    """The queries of an existing run that ``--resume`` may keep: checked before any work starts.

    ``expected(qids)`` gives the number of hits each of the run's queries should have (called once
    the run's tag is checked). A query is kept when it has that many (a killed write never leaves
    half a query, but a run cut by hand or by another tool may: the others are reranked again);
    queries without an expected count are kept as they are, since rewriting the run must not lose them.

    Raises:
        ValueError: a malformed line (named by ``read_run``), or a run of another method or budget.
    """
    run = read_run(output)
    if run.tags and run.tags != {tag}:
        raise ValueError(
            f"{output} is a run of {', '.join(sorted(run.tags))}, not {tag}: --resume continues the same "
            "method and budget; choose another --output"
        )
    counts = expected(set(run.hits))
    done = {q: h for q, h in run.hits.items() if q not in counts or len(h) == counts[q]}
    short = sorted(set(run.hits) - set(done))
    if short:
        log.warning(
            "%d queries of %s are incomplete and are reranked again: %s", len(short), output, ", ".join(short[:10])
        )
    return done


@dataclass(frozen=True)
class RunRequests:
    """Requests made from a run file: what to rerank, and what stays where it is."""

    requests: list
    """One RankLLM ``Request`` per query with a topic: its top hits that have text."""
    fixed: dict[str, set[str]]
    """Per query, docids of its top without text: they keep their positions (``keep_missing``)."""
    as_is: dict[str, Hits]
    """Queries without a topic, their hits in input order (``keep_missing``)."""


def run_requests(
    hits: dict[str, Hits],
    topics: dict[str, str],
    contents_of: Callable[[set[str]], dict[str, str]],
    rerank_top: int | None,
    keep_missing: bool = False,
) -> RunRequests:
    """RankLLM requests of each query's top ``rerank_top`` hits (all: None) from a run, with texts from ``contents_of``.

    Raises:
        ValueError: a qid without a topic or a docid without text (named), unless ``keep_missing``:
            then a warning, and the query's hits (or the hit) keep their places.
    """
    from dacite import from_dict
    from rank_llm.data import Request

    no_topic = [q for q in hits if q not in topics]
    if no_topic and not keep_missing:
        raise ValueError(
            f"{len(no_topic)} queries of the run have no topic, e.g. qid {no_topic[0]!r}; give their topics, "
            "or --keep-missing to keep their hits as they are"
        )
    if no_topic:
        log.warning(
            "%d queries have no topic and keep their hits as they are: %s", len(no_topic), ", ".join(no_topic[:10])
        )
    tops = {q: h[:rerank_top] if rerank_top is not None else h for q, h in hits.items() if q in topics}
    wanted = {d for top in tops.values() for d, _ in top}
    contents = contents_of(wanted)
    missing = sorted(wanted - set(contents))
    if missing and not keep_missing:
        raise ValueError(
            f"{len(missing)} documents of the run have no text, e.g. docid {missing[0]!r}; give a corpus that "
            "holds them, or --keep-missing to keep such hits in place"
        )
    if missing:
        log.warning("%d documents have no text and keep their places: %s", len(missing), ", ".join(missing[:10]))
    requests, fixed = [], {}
    for qid, top in tops.items():
        fixed[qid] = {d for d, _ in top if d not in contents}
        candidates = [
            {"docid": d, "score": score, "doc": {"contents": contents[d]}} for d, score in top if d in contents
        ]
        requests.append(
            from_dict(data_class=Request, data={"query": {"qid": qid, "text": topics[qid]}, "candidates": candidates})
        )
    as_is = {q: rank_scores([d for d, _ in hits[q]]) for q in no_topic}
    return RunRequests(requests, {q: f for q, f in fixed.items() if f}, as_is)


def kept_in_place(reranked: list[str], top: list[str], fixed: set[str]) -> list[str]:
    """``top`` with the ``fixed`` docids at their own positions and the others in ``reranked``'s order."""
    others = iter(reranked)
    return [d if d in fixed else next(others) for d in top]


def reranked_batches(
    engine: Target | Workers,
    requests: list,
    decoding: DecodingConfig,
    prompt: PromptConfig,
    batching: BatchConfig,
    windows: WindowConfig,
) -> Iterator[list[Reranked]]:
    """``rerank_windowed`` in this process (``engine`` a loaded target) or over Ray actors (``Workers``):
    the same batches in the same order either way."""
    if isinstance(engine, Target):
        return rerank_windowed(engine, requests, decoding, prompt, batching, windows)
    return engine.rerank(requests, decoding, prompt, batching, windows)


def rerank_into_run(
    engine: Target | Workers,
    requests: list,
    hits: dict[str, Hits],
    output: Path,
    decoding: DecodingConfig,
    prompt: PromptConfig,
    batching: BatchConfig,
    windows: WindowConfig,
    done: dict[str, Hits],
    fixed: dict[str, set[str]] | None = None,
    on_batch: Callable[[list[Reranked]], None] | None = None,
) -> dict[str, Hits]:
    """Rerank ``requests`` (each the top of its query's ``hits``) and rewrite ``output`` atomically after
    every batch: every query of ``hits`` in its order (reranked top, then the rest of its hits in
    their order; not yet reranked: left out), queries of ``done`` as they are.

    ``fixed[qid]``: docids of the top that were not reranked (no text) and keep their positions.
    Returns the run as written last.
    """
    fixed = fixed or {}
    run = dict(done)
    tag = decoding.run_tag
    top_of = {str(r.query.qid): len(r.candidates) + len(fixed.get(str(r.query.qid), ())) for r in requests}

    def ordered() -> dict[str, Hits]:
        return {**{q: h for q, h in run.items() if q not in hits}, **{q: run[q] for q in hits if q in run}}

    with tqdm(total=len(requests), desc=tag, unit="query", file=sys.stderr) as bar:
        for batch in reranked_batches(engine, requests, decoding, prompt, batching, windows):
            for r in batch:
                docids = [d for d, _ in hits[r.qid]]
                depth = top_of[r.qid]
                top = kept_in_place(
                    r.docids[: depth - len(fixed.get(r.qid, ()))], docids[:depth], fixed.get(r.qid, set())
                )
                run[r.qid] = rank_scores(top + docids[depth:])
            write_run(output, ordered(), tag)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(batch)
    if not requests:
        write_run(output, ordered(), tag)
    return ordered()


def pipeline(
    engine: Target | Workers,
    index: str | os.PathLike,
    topics: dict[str, str],
    qrels: list | None,
    output: str | os.PathLike,
    decoding: DecodingConfig,
    prompt: PromptConfig,
    hits: int = 100,
    rerank_top: int = 20,
    resume: bool = False,
    overwrite: bool = False,
    batching: BatchConfig = BatchConfig(),
    windows: WindowConfig = WindowConfig(),
    measures: Sequence[Any] | None = None,
) -> PipelineResult:
    """Retrieve, rerank the top ``rerank_top`` of each query, write the run after every batch of queries.

    ``engine``: the loaded target, or ``Workers`` (Ray actors) that rerank the same batches.

    The run keeps all ``hits`` per query: the reranked top k, then BM25's order below it. Lists
    longer than ``windows.window_size`` are ranked with RankLLM's sliding windows.

    Raises:
        ValueError: ``output`` exists and neither ``resume`` nor ``overwrite`` is given (nothing
            written is ever overwritten silently), or ``rerank_top`` < 1.
    """
    from rsd_rerank.integrations.pyserini import bm25

    output = Path(output)
    if rerank_top < 1 or hits < rerank_top:
        raise ValueError(f"need 1 <= --rerank-top <= --hits, got {rerank_top} and {hits}")
    destination = run_destination(output, resume, overwrite)
    tag = decoding.run_tag

    def bm25_counts(qids: set[str]) -> dict[str, int]:
        found = bm25(index, {q: topics[q] for q in qids if q in topics}, hits) if qids else {}
        return {q: len(h) for q, h in found.items()}

    done = resumable(output, tag, bm25_counts) if resume and output.exists() else {}
    todo = {q: t for q, t in topics.items() if q not in done}
    runs, requests = candidate_requests(index, todo, hits, rerank_top) if todo else ({}, [])
    windows = replace(windows, rerank_top=rerank_top)
    try:
        run = rerank_into_run(engine, requests, runs, destination, decoding, prompt, batching, windows, done)
    except BaseException:
        discard_staging(destination, output)
        raise
    swap_in(destination, output)
    metrics, unjudged = None, []
    evaluated = evaluate(qrels, {qid: dict(found) for qid, found in run.items()}, measures)
    if evaluated is not None:
        reranked_metrics, unjudged = evaluated
        # BM25 beside it over the same queries; those resumed from the run file are searched again.
        bm25_runs = {**(bm25(index, {q: topics[q] for q in done if q in topics}, hits) if done else {}), **runs}
        bm25_metrics, _ = evaluate(qrels, {q: dict(found) for q, found in bm25_runs.items() if q in run}, measures)
        metrics = {"BM25": bm25_metrics, tag: reranked_metrics}
    return PipelineResult(len(requests), len(done), metrics, unjudged)
