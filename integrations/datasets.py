"""Corpora, queries and qrels by ir_datasets id (``beir/scifact``, ``beir/scifact/test``) or from local files."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["corpus", "doc_contents", "qrels", "queries"]

log = logging.getLogger(__name__)


def _dataset(dataset_id: str):
    import ir_datasets

    try:
        return ir_datasets.load(dataset_id)
    except KeyError as err:  # a file name that does not exist lands here too
        raise ValueError(
            f"{dataset_id!r} is neither an existing file nor an ir_datasets id (such as beir/scifact/test)"
        ) from err


def corpus(source: str | os.PathLike) -> Iterator[tuple[str, str, str]]:
    """``(docid, title, text)`` from an ir_datasets id or a JSONL file with ``_id``/``id``, ``title``, ``text``/``contents``.

    Raises:
        ValueError: an unknown dataset id, or a JSONL line without an id (its line number is named).
    """
    path = Path(source)
    if path.is_file():
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark would stick to the first id
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}:{number}: not a JSON corpus line ({err.msg} at column {err.colno})"
                    ) from err
                if not isinstance(doc, dict):
                    raise ValueError(f"{path}:{number}: a corpus line is a JSON object, got {type(doc).__name__}")
                docid = doc.get("_id", doc.get("id", doc.get("docid")))
                if docid is None or not str(docid).strip():
                    raise ValueError(f"{path}:{number}: corpus line has no id (_id, id or docid)")
                yield str(docid), doc.get("title", ""), doc.get("text", doc.get("contents", ""))
        return
    for doc in _dataset(str(source)).docs_iter():
        yield doc.doc_id, getattr(doc, "title", ""), doc.text


def doc_contents(source: str | os.PathLike, docids: set[str]) -> dict[str, str]:
    """``{docid: contents}`` for the ``docids`` found in an ir_datasets corpus or a JSONL corpus file;
    contents = title + " " + text, as ``rsd-rerank index`` stores them (missing docids are left out)."""
    path = Path(source)
    if path.is_file():
        return {d: f"{title} {text}".strip() for d, title, text in corpus(path) if d in docids}
    store = _dataset(str(source)).docs_store()
    found = store.get_many(docids)
    return {d: f"{getattr(doc, 'title', '')} {doc.text}".strip() for d, doc in found.items()}


def queries(source: str | os.PathLike) -> dict[str, str]:
    """``{qid: text}`` from an ir_datasets id or a ``qid<TAB>text`` topics file.

    A topics line is split on its first tab and nothing else: no quoting, so a query may hold
    quotes and further tabs. Empty queries are kept, with a warning.

    Raises:
        ValueError: a line without a tab, an empty or repeated qid (the line is named).
    """
    path = Path(source)
    if path.is_file():
        topics: dict[str, str] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            qid, tab, text = line.partition("\t")
            if not tab or not qid.strip():
                raise ValueError(f"{path}:{number}: a topics line is qid<TAB>text, got {line[:80]!r}")
            if qid in topics:
                raise ValueError(f"{path}:{number}: qid {qid!r} appears twice")
            topics[qid] = text
    else:
        topics = {q.query_id: q.text for q in _dataset(str(source)).queries_iter()}
    empty = [qid for qid, text in topics.items() if not text.strip()]
    if empty:
        log.warning("%d queries have empty text: %s", len(empty), ", ".join(empty[:10]))
    return topics


def qrels(source: str | os.PathLike) -> list | None:
    """Qrels as ir_measures reads them, from an ir_datasets id or a TREC qrels file; None where there are none."""
    import ir_measures

    path = Path(source)
    if path.is_file():
        return list(ir_measures.read_trec_qrels(str(path)))
    dataset = _dataset(str(source))
    if not dataset.has_qrels():
        return None
    try:
        return list(dataset.qrels_iter())
    except Exception as err:  # ir_datasets raises whatever its download or reader raises
        raise ValueError(
            f"the qrels of {source} are not available here ({type(err).__name__}: {err}); "
            "give them as a file with --qrels"
        ) from err
