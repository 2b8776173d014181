"""Requests in, rankings and TREC runs out: RankLLM's request JSONL, atomic run files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rsd_rerank.decoding import Decoded, DecodingConfig, Trace, rank
from rsd_rerank.prompt import PromptConfig, check_candidates
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target

__all__ = [
    "Reranked",
    "atomic_write",
    "read_requests",
    "request_records",
    "rerank_request",
    "trec_lines",
    "write_trec",
]


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


def trec_lines(ranked: Reranked, tag: str) -> list[str]:
    """TREC run lines; scores K, K-1, …, 1 so that every evaluator reads the same order."""
    k = len(ranked.docids)
    return [f"{ranked.qid} Q0 {d} {r} {k - r + 1} {tag}" for r, d in enumerate(ranked.docids, start=1)]


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_trec(path: str | os.PathLike, ranked: Iterable[Reranked], tag: str = "rsd-rerank") -> None:
    """Write a TREC run atomically."""
    atomic_write(path, "".join(line + "\n" for r in ranked for line in trec_lines(r, tag)))
