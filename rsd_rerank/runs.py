"""Requests in, rankings and TREC runs out: RankLLM's request JSONL, and the one writer and one reader
of TREC run files (``write_run``, ``read_run``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsd_rerank.decoding import Decoded, Trace
from rsd_rerank.files import atomic_write
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.prompt import PromptConfig, check_candidates
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target

__all__ = [
    "Hits",
    "Reranked",
    "TrecRun",
    "rank_scores",
    "read_requests",
    "read_run",
    "request_records",
    "rerank_request",
    "write_run",
]

Hits = list[tuple[str, float]]
"""One query's ranked documents, best first: ``[(docid, score), …]``."""


def read_requests(path: str | os.PathLike) -> list:
    """RankLLM ``Request`` objects from a JSONL file (one ``{"query": …, "candidates": […]}`` per line).

    Raises:
        ValueError: a missing file, or a line that is not a RankLLM request (the line number is named).
    """
    from dacite import DaciteError, from_dict
    from rank_llm.data import Request

    requests = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read requests file {path}: {err.strerror}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(from_dict(data_class=Request, data=json.loads(line)))
        except (json.JSONDecodeError, DaciteError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a RankLLM request ({err})") from err
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests


def request_records(
    runs: dict[str, list[tuple[str, float]]], topics: dict[str, str], contents: dict[str, str], depth: int
) -> list[dict]:
    """RankLLM request dicts (the JSONL ``read_requests`` reads): each query with its top ``depth`` hits.

    Queries with no hits are left out: there is nothing to rerank.
    """
    return [
        {
            "query": {"qid": qid, "text": topics[qid]},
            "candidates": [{"docid": d, "score": score, "doc": {"contents": contents[d]}} for d, score in hits[:depth]],
        }
        for qid, hits in runs.items()
        if hits
    ]


@dataclass(frozen=True)
class Reranked:
    """One request's candidates in their new order, with the decoding trace."""

    qid: str
    docids: list[str]
    trace: Trace
    prompt_tokens: int


def rerank_request(target: Target, request, decoding: DecodingConfig, prompt: PromptConfig) -> Reranked:
    """Rerank one RankLLM ``Request``.

    A single candidate is returned as it is, with no LLM call (there is nothing to order).

    Raises:
        ValueError: no candidates, duplicate docids, more than 26 candidates, or docs without text.
    """
    docids = [str(c.docid) for c in request.candidates]
    check_candidates(docids)
    qid = str(request.query.qid)
    if len(docids) == 1:
        return Reranked(qid, docids, Trace(), 0)
    session = TargetSession.from_request(target, request, prompt)
    decoded: Decoded = rank(session, decoding)
    return Reranked(qid, [docids[i] for i in decoded.ranking], decoded.trace, session.prompt_tokens)


def rank_scores(docids: Sequence[str]) -> Hits:
    """Scores n, n-1, …, 1 in rank order, so that every evaluator reads the order as it is (ties impossible)."""
    n = len(docids)
    return [(d, float(n - r)) for r, d in enumerate(docids)]


def _score_text(score: float) -> str:
    # Rank scores are integers and stay short; retrieval scores keep six decimals.
    return str(int(score)) if float(score).is_integer() else f"{score:.6f}"


def write_run(path: str | os.PathLike, run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> int:
    """Write a TREC run ``qid Q0 docid rank score tag`` atomically, queries in ``run``'s order; returns its lines.

    Raises:
        ValueError: a qid, docid or tag with whitespace (it would give a line of more than six columns).
    """
    lines = []
    for qid, hits in run.items():
        for rank_, (docid, score) in enumerate(hits, start=1):
            lines.append(f"{qid} Q0 {docid} {rank_} {_score_text(score)} {tag}\n")
    for name, value in (("tag", tag), *(("qid", q) for q in run), *(("docid", d) for h in run.values() for d, _ in h)):
        if not value or any(c.isspace() for c in str(value)):
            raise ValueError(f"{name} {value!r} is empty or holds whitespace: a TREC run line needs six columns")
    atomic_write(path, "".join(lines))
    return len(lines)


@dataclass(frozen=True)
class TrecRun:
    """A TREC run file as read: each query's hits in file order, and the run tags it carries."""

    hits: dict[str, Hits]
    tags: frozenset[str]

    def scores(self) -> dict[str, dict[str, float]]:
        """``{qid: {docid: score}}``, the shape ir_measures reads."""
        return {qid: dict(hits) for qid, hits in self.hits.items()}


def read_run(path: str | os.PathLike) -> TrecRun:
    """Read a whitespace-separated six-column TREC run (``qid Q0 docid rank score tag``).

    Raises:
        ValueError: an unreadable file, or a line that is not six columns with an integer rank and a
            numeric score (the line number and the line are named).
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read run file {path}: {err.strerror or err}") from err
    hits: dict[str, Hits] = {}
    tags = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} columns, not 6")
            qid, _, docid, rank_, score, tag = parts
            int(rank_)
            hits.setdefault(qid, []).append((docid, float(score)))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a TREC run line ({err}): {line!r}") from err
        tags.add(tag)
    return TrecRun(hits, frozenset(tags))
