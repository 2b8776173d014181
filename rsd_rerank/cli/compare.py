"""``rsd-rerank compare``: every decoder on the same candidate lists (fidelity, nDCG@10, seconds)."""

from __future__ import annotations

import argparse
import logging

from rsd_rerank.cli.options import (
    TARGET_FIELDS,
    add_config_options,
    add_measures_option,
    add_model_options,
    add_scale_options,
    add_topic_options,
    at_least,
    batch_config,
    budget_list,
    check_invariant,
    config_from,
    measures_of,
    prompt_config,
    reranking_engine,
    topics_and_qrels,
)
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.targets import Target, TargetConfig

log = logging.getLogger("rsd_rerank")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="every decoder on the same candidate lists: fidelity, nDCG@10, seconds")
    add_model_options(p)
    add_scale_options(p)
    p.add_argument("--requests", help="RankLLM request JSONL (instead of --index + --dataset)")
    p.add_argument("--index", help="Lucene index for BM25 candidates")
    add_topic_options(p, required=False)
    p.add_argument("--candidates", type=at_least(1), default=20, help="BM25 hits per query to rerank (K)")
    p.add_argument("--methods", default="generate,first,std,gsd,consensus,rsd,greedy")
    p.add_argument("--budgets", type=budget_list, default=[1, 3, 5, 7], help="T values for the budgeted methods")
    add_measures_option(p)
    add_config_options(p, DecodingConfig, ["agent"])
    p.add_argument(
        "--ranker",
        action="append",
        default=[],
        metavar="METHOD=DIR",
        help="a baseline's heads, fine-tuned ranker or drafter (default: where `rsd-rerank finetune` puts them); repeat",
    )
    p.add_argument("--out", required=True, help="output stem: writes .json, .md, .png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.compare import compare, summarise
    from rsd_rerank.integrations.pipeline import candidate_requests
    from rsd_rerank.integrations.report import write_comparison
    from rsd_rerank.runs import read_requests

    if args.requests:
        requests = read_requests(args.requests)[: args.queries]
        judged = datasets.qrels(args.qrels) if args.qrels else None
    else:
        if not args.index or not (args.dataset or args.topics):
            raise ValueError("give --requests FILE, or --index with --dataset/--topics")
        topics, judged = topics_and_qrels(args)
        _, requests = candidate_requests(args.index, topics, args.candidates, args.candidates)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods {args.methods!r} names no method")
    check_invariant(args, methods)
    if args.agent is not None and not {"rsd", "rsd-drafts"} & set(methods):
        log.warning("--agent is ignored: --methods has no rsd")
    companions = {"rsd": args.agent} if args.agent is not None else {}
    for spec in args.ranker:
        method, _, path = spec.partition("=")
        if method not in methods or not path:
            raise ValueError(f"--ranker {spec!r}: give METHOD=DIR for a method of --methods")
        companions[method] = path
    settings = (methods, args.budgets, prompt_config(args), companions, batch_config(args))
    with reranking_engine(args) as engine:
        if isinstance(engine, Target):
            records, name = compare(engine, requests, judged, *settings), engine.name
            dtype = str(engine.model.dtype).removeprefix("torch.")
        else:  # Ray actors: the same chunks, records in request order (each worker logs its dtype)
            target = config_from(TargetConfig, args, TARGET_FIELDS)
            records, name, dtype = engine.compare(requests, *settings), target.model, target.dtype
    rows = summarise(records, judged, measures_of(args))
    meta = {
        "target": name,
        "dtype": dtype,
        "queries": len(requests),
        "methods": methods,
        "budgets": args.budgets,
        "source": args.requests or args.dataset or args.topics,
    }
    table = write_comparison(args.out, meta, rows, records)
    print(table)
    print(f"wrote {args.out}.json, .md and .png")
