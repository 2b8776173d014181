"""``rsd-rerank index``: a corpus indexed flat with Pyserini."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="index a corpus flat with Pyserini (contents = title + text)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="ir_datasets id, e.g. beir/scifact")
    source.add_argument("--corpus", help="JSONL corpus with _id/id, title, text")
    p.add_argument("--index", required=True, help="new index folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import index_corpus

    n = index_corpus(datasets.corpus(args.corpus or args.dataset), args.index)
    print(f"indexed {n} documents into {args.index}")
