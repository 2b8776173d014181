"""``rsd-rerank retrieve``: BM25 into a TREC run (and RankLLM requests), with metrics where qrels exist."""

from __future__ import annotations

import argparse
import json

from rsd_rerank.cli.options import (
    add_measures_option,
    add_topic_options,
    at_least,
    measures_of,
    print_unjudged,
    topics_and_qrels,
)


def add_parser(sub) -> None:
    p = sub.add_parser("retrieve", help="BM25 (k1 0.9, b 0.4) into a TREC run; metrics where qrels exist")
    p.add_argument("--index", required=True)
    add_topic_options(p)
    p.add_argument("--exclude", help="drop the queries of these topics (e.g. beir/scifact/test for training claims)")
    p.add_argument("--hits", type=at_least(1), default=1000)
    p.add_argument("--output", required=True, help="TREC run file, written atomically")
    p.add_argument("--requests", help="also write each query's top --candidates hits as RankLLM request JSONL")
    p.add_argument("--candidates", type=at_least(1), default=20, help="hits per request in --requests (default 20)")
    add_measures_option(p, "nDCG@10 R@100 R@1000")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.files import atomic_write
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.measures import evaluate
    from rsd_rerank.integrations.pyserini import bm25, request_dicts
    from rsd_rerank.runs import write_run

    topics, judged = topics_and_qrels(args)
    if args.exclude:
        held_out = datasets.queries(args.exclude)
        topics = {qid: text for qid, text in topics.items() if qid not in held_out}
        print(f"{len(topics)} queries after excluding the {len(held_out)} of {args.exclude}")
    runs = bm25(args.index, topics, args.hits)
    n = write_run(args.output, runs, "bm25")
    print(f"wrote {n} lines for {len(runs)} queries to {args.output}")
    if args.requests:
        records = request_dicts(args.index, runs, topics, args.candidates)
        atomic_write(args.requests, "".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {len(records)} RankLLM requests (top {args.candidates}) to {args.requests}")
    evaluated = evaluate(judged, {qid: dict(hits) for qid, hits in runs.items()}, measures_of(args))
    if evaluated is None:
        print("no qrels for these topics: no metrics")
        return
    values, unjudged = evaluated
    for measure, value in values.items():
        print(f"{measure}\t{value:.4f}")
    print_unjudged(unjudged)
