"""Corpora, queries and qrels by ir_datasets id (``beir/scifact``, ``beir/scifact/test``) or from local files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["corpus", "qrels", "queries"]


def _dataset(dataset_id: str):
    import ir_datasets

    try:
        return ir_datasets.load(dataset_id)
    except KeyError as err:
        raise ValueError(f"unknown dataset id {dataset_id!r} (an ir_datasets id such as beir/scifact/test)") from err


def corpus(source: str | os.PathLike) -> Iterator[tuple[str, str, str]]:
    """``(docid, title, text)`` from an ir_datasets id or a JSONL file with ``_id``/``id``, ``title``, ``text``/``contents``.

    Raises:
        ValueError: an unknown dataset id, or a JSONL line without an id (its line number is named).
    """
    path = Path(source)
    if path.is_file():
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                doc = json.loads(line)
                docid = doc.get("_id", doc.get("id", doc.get("docid")))
                if docid is None or not str(docid).strip():
                    raise ValueError(f"{path}:{number}: corpus line has no id (_id, id or docid)")
                yield str(docid), doc.get("title", ""), doc.get("text", doc.get("contents", ""))
        return
    for doc in _dataset(str(source)).docs_iter():
        yield doc.doc_id, getattr(doc, "title", ""), doc.text


def queries(source: str | os.PathLike) -> dict[str, str]:
    """``{qid: text}`` from an ir_datasets id or a ``qid<TAB>text`` topics file."""
    path = Path(source)
    if path.is_file():
        with open(path, newline="") as f:
            return {row[0]: row[1] for row in csv.reader(f, delimiter="\t") if len(row) >= 2}
    return {q.query_id: q.text for q in _dataset(str(source)).queries_iter()}


def qrels(source: str | os.PathLike) -> list | None:
    """Qrels as ir_measures reads them, from an ir_datasets id or a TREC qrels file; None where there are none."""
    import ir_measures

    path = Path(source)
    if path.is_file():
        return list(ir_measures.read_trec_qrels(str(path)))
    dataset = _dataset(str(source))
    return list(dataset.qrels_iter()) if dataset.has_qrels() else None
