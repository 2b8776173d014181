"""``rsd-rerank pipeline``: BM25, the top k reranked, a TREC run, and metrics beside BM25's."""

from __future__ import annotations

import argparse

from rsd_rerank.cli.options import (
    WINDOW_FIELDS,
    add_config_options,
    add_decoding_options,
    add_measures_option,
    add_model_options,
    add_scale_options,
    add_topic_options,
    at_least,
    batch_config,
    config_from,
    decoding_config,
    measures_of,
    print_metrics,
    prompt_config,
    reranking_engine,
    topics_and_qrels,
)
from rsd_rerank.runs import WindowConfig


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="BM25 → rerank the top k → TREC run → metrics next to BM25's")
    add_model_options(p)
    add_scale_options(p)
    add_decoding_options(p)
    p.add_argument("--index", required=True, help="Lucene index (rsd-rerank index)")
    add_topic_options(p)
    p.add_argument("--hits", type=at_least(1), default=100, help="BM25 hits per query kept in the run")
    p.add_argument(
        "--rerank-top",
        type=at_least(1),
        default=20,
        help="hits reranked of the --hits retrieved: 20, the paper's K, one window (rerank takes a run whole by "
        "default: its file says what to rerank; windows beyond --window-size as RankLLM's)",
    )
    add_config_options(p, WindowConfig, WINDOW_FIELDS[1:])
    add_measures_option(p)
    p.add_argument("--output", required=True, help="TREC run, rewritten atomically after every batch of queries")
    p.add_argument("--resume", action="store_true", help="skip queries already in --output")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (kept whole until the new run is)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations.pipeline import pipeline

    decoding = decoding_config(args)
    windows = config_from(WindowConfig, args, WINDOW_FIELDS[1:])  # checked before the model loads
    topics, judged = topics_and_qrels(args)
    with reranking_engine(args) as engine:
        result = pipeline(
            engine,
            args.index,
            topics,
            judged,
            args.output,
            decoding,
            prompt_config(args),
            hits=args.hits,
            rerank_top=args.rerank_top,
            resume=args.resume,
            overwrite=args.overwrite,
            batching=batch_config(args),
            windows=windows,
            measures=measures_of(args),
        )
    print(f"reranked {result.reranked} queries ({result.resumed} already in {args.output}); run in {args.output}")
    if result.metrics is None:
        print("no qrels for these topics: no metrics")
    else:
        print_metrics(result.metrics, result.unjudged)
