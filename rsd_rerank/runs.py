"""Requests in, rankings and TREC runs out: RankLLM's request JSONL, and the one writer and one reader
of TREC run files (``write_run``, ``read_run``)."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.files import atomic_write
from rsd_rerank.prompt import TEXT_FIELDS, has_text

__all__ = [
    "BatchConfig",
    "Hits",
    "TrecRun",
    "WindowConfig",
    "rank_scores",
    "read_requests",
    "read_run",
    "request_records",
    "batches",
    "request_chunks",
    "write_run",
]

log = logging.getLogger(__name__)

Hits = list[tuple[str, float]]
"""One query's ranked documents, best first: ``[(docid, score), …]``."""


def read_requests(path: str | os.PathLike) -> list:
    """RankLLM ``Request`` objects from a request file, in either of the formats RankLLM's
    ``read_requests_from_file`` reads: JSONL (one ``{"query": …, "candidates": […]}`` per line) or a
    ``.json`` array of such objects. Each record is converted by RankLLM's own data classes
    (``dacite.from_dict(Request, …)``), and a candidate's ``doc`` may carry any of the keys RankLLM's
    prompt reads (``text``, ``segment``, ``contents``, ``content``, ``body``, ``passage``, and ``title``).

    Raises:
        ValueError: a missing file, or a line (JSONL) or element (JSON array) that is not a RankLLM
            request, named by its number.
    """
    from dacite import DaciteError, from_dict
    from rank_llm.data import Request

    if str(path).endswith(".json"):
        try:
            records = json.loads("".join(line for _, line in _lines(path, "requests file")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON array of RankLLM requests ({err})") from err
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json request file holds an array of requests, got {type(records).__name__}")
        where = [(f"{path}: element {number}", record) for number, record in enumerate(records)]
    else:
        where = []
        for number, line in _lines(path, "requests file"):
            if not line.strip():
                continue
            try:
                where.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a RankLLM request ({err})") from err
    requests = []
    for place, record in where:
        _check_request_shape(place, record)
        try:
            requests.append(from_dict(data_class=Request, data=record))
        except (DaciteError, TypeError, ValueError) as err:
            raise ValueError(f"{place}: not a RankLLM request ({err})") from err
    if not requests:
        raise ValueError(f"{path} holds no requests")
    warn_textless(path, requests)
    empty = [str(r.query.qid) for r in requests if not str(r.query.text).strip()]
    if empty:
        log.warning("%s: %d requests have an empty query text: %s", path, len(empty), ", ".join(empty[:10]))
    for number, r in enumerate(requests, start=1):
        for kind, value in (("qid", r.query.qid), *(("docid", c.docid) for c in r.candidates)):
            if not str(value).strip() or any(ch.isspace() for ch in str(value)):
                raise ValueError(
                    f"{path}: request {number} has {kind} {str(value)!r}: TREC runs need ids without whitespace"
                )
    return requests


def warn_textless(source: str | os.PathLike, requests: Sequence) -> None:
    """One warning naming ``source`` when candidates of ``requests`` have no text (request files and runs alike)."""
    textless = [sum(not has_text(c.doc) for c in r.candidates) for r in requests]
    if sum(textless):
        log.warning(
            "%s: %d candidates in %d requests have no text; they are not reranked but kept below the candidates "
            "with text, in input order",
            source,
            sum(textless),
            sum(n > 0 for n in textless),
        )


def read_run_requests(path: str | os.PathLike) -> list:
    """``read_requests`` for a TREC run (``rerank --requests``): one ranking per qid, each candidate list
    one the engine can rank, checked before anything is loaded; requests without candidates get no
    lines in the run (a warning names them).

    Raises:
        ValueError: what ``read_requests`` raises, a qid repeated, or a bad candidate list (``check_candidates``).
    """
    from rsd_rerank.prompt import check_candidates

    requests = read_requests(path)
    repeated = sorted(q for q, n in Counter(str(r.query.qid) for r in requests).items() if n > 1)
    if repeated:
        raise ValueError(f"{path} repeats qids {', '.join(repeated[:10])}: a TREC run holds one ranking per qid")
    for request in requests:
        if request.candidates:
            check_candidates([str(c.docid) for c in request.candidates], one_prompt=False)
    empty = [str(r.query.qid) for r in requests if not r.candidates]
    if empty:
        log.warning("%d requests have no candidates and get no lines in the run: %s", len(empty), ", ".join(empty[:10]))
    return requests


def _check_request_shape(place: str, record) -> None:
    """What dacite's messages would leave the user searching for: a record, candidate or doc of the
    wrong kind, or a doc without a text field, named by qid and docid."""
    if not isinstance(record, dict):
        raise ValueError(f"{place}: a request is an object with query and candidates, got {type(record).__name__}")
    qid = (record.get("query") or {}).get("qid") if isinstance(record.get("query"), dict) else None
    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        return  # dacite names the missing or mistyped field
    for number, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            raise ValueError(
                f"{place} (qid {qid}): candidate {number} is a {type(candidate).__name__}; each candidate is an "
                'object {"docid": …, "score": …, "doc": {"contents": …}}'
            )
        doc = candidate.get("doc")
        if isinstance(doc, dict) and not any(field in doc for field in TEXT_FIELDS):
            raise ValueError(
                f"{place} (qid {qid}): candidate {candidate.get('docid')!r} has none of the doc fields RankLLM reads "
                f"({', '.join(TEXT_FIELDS)}): {sorted(doc)}"
            )


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
class BatchConfig:
    """How many requests share a session (one prefill, one forward per round)."""

    batch_size: int = bounded(1, 1)
    """Requests decoded together: their prompts are prefilled one by one into one left-padded KV, then every round verifies all of them in one forward."""
    max_batch_tokens: int | None = bounded(None, 1)
    """Cap on batch size x longest prompt (padded tokens of a prefill), so that long prompts do not overflow memory; None: no cap."""
    batch_invariant: bool = False
    """Batch-invariant passes: each ranking verified whole and alone in a forward of one shape per query, so rankings are the same at any batch size and every budgeted method at T >= K equals greedy in bf16 and fp16 too (float32 needs it for neither); passes feed more tokens and are not batched across queries."""

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class WindowConfig:
    """Which candidates of a request are reranked, and RankLLM's sliding windows over them."""

    rerank_top: int | None = bounded(None, 1)
    """Candidates reranked per query, from the top (None: all, as RankLLM reranks a run file whole; ``pipeline`` takes 20 of its hits, the paper's K); those below keep their order under them."""
    window_size: int = bounded(20, 1)
    """Candidates per LLM prompt; longer lists are ranked window by window (RankLLM's default)."""
    stride: int = bounded(10, 1)
    """Step between windows, from the bottom of the list up (RankLLM's default)."""

    def __post_init__(self):
        check_ranges(self)
        if self.stride > self.window_size:  # RankLLM's rule, checked here before any model is loaded
            raise ValueError(
                f"--stride {self.stride} is larger than --window-size {self.window_size}; windows would skip "
                "candidates (give a stride of at most the window size)"
            )


def request_chunks(requests: Sequence, batching: BatchConfig) -> list[list]:
    """Consecutive chunks of ``batching.batch_size`` requests: the unit one process decodes together,
    and the unit Ray workers are given, so that both decode the same groups."""
    size = batching.batch_size
    return [list(requests[i : i + size]) for i in range(0, len(requests), size)]


def batches(lengths: Sequence[int], config: BatchConfig) -> list[list[int]]:
    """Consecutive groups of indices: at most ``batch_size`` each, and (where capped) group size x its longest
    length within ``max_batch_tokens`` (a single longer item still forms a group of its own)."""
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        group = groups[-1] if groups else None
        if group is not None and len(group) < config.batch_size:
            longest = max(n, *(lengths[j] for j in group))
            if config.max_batch_tokens is None or longest * (len(group) + 1) <= config.max_batch_tokens:
                group.append(i)
                continue
        groups.append([i])
    return groups


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
    hits: dict[str, Hits] = {}
    seen: dict[tuple[str, str], int] = {}
    tags = set()
    for number, line in _lines(path, "run file"):
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
            raise ValueError(f"{path}:{number}: not a TREC run line ({err}): {line.rstrip()!r}") from err
        if (qid, docid) in seen:
            raise ValueError(
                f"{path}:{number}: query {qid} lists document {docid} again (first on line {seen[qid, docid]})"
            )
        seen[qid, docid] = number
        tags.add(tag)
    return TrecRun(hits, frozenset(tags))


def _lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    """(number, line) of a UTF-8 text file, read line by line (a byte-order mark is dropped); a device,
    FIFO or folder is refused unread.

    Raises:
        ValueError: naming the file: missing, not a regular file, unreadable, or not UTF-8.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from err
