"""``rsd-rerank finetune``: a baseline's companion (heads, LoRA rankers) or the reranker recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsd_rerank.cli.options import (
    FINETUNE_FIELDS,
    add_config_options,
    add_model_options,
    at_least,
    batch_config,
    config_from,
    prompt_config,
    target_from,
)
from rsd_rerank.training.baselines import FINETUNED, FinetuneConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="train a baseline on the target's own greedy rankings: heads (blockwise, medusa) or a LoRA ranker "
        "(first-ft, rankzephyr-ft); or make the target a listwise reranker (reranker: the smollm2-reranker recipe)",
    )
    add_model_options(p)
    p.add_argument("--method", required=True, choices=FINETUNED, help="what to train")
    p.add_argument("--requests", required=True, help="training requests (RankLLM JSONL); never the test queries")
    p.add_argument("--queries", type=at_least(1), default=None, help="only the first N requests")
    p.add_argument(
        "--val-requests", help="reranker: held-out training requests for the learning curve (with --validate-every)"
    )
    p.add_argument("--out", help="folder (default: where the methods look, <cache>/baselines/<target>/<method>)")
    add_config_options(p, FinetuneConfig, FINETUNE_FIELDS)
    p.add_argument("--resume", action="store_true", help="continue an interrupted LoRA run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.companions import companion_dir
    from rsd_rerank.runs import read_requests
    from rsd_rerank.training.baselines import finetune

    requests = read_requests(args.requests)[: args.queries]
    validation = read_requests(args.val_requests) if args.val_requests else None
    config = config_from(FinetuneConfig, args, FINETUNE_FIELDS, method=args.method)
    if validation and not (config.method == "reranker" and config.validate_every):
        raise ValueError("--val-requests goes with --method reranker and --validate-every N")
    target = target_from(args)
    out = Path(args.out) if args.out else companion_dir(target, config.method)
    summary = finetune(
        target,
        requests,
        config,
        out,
        prompt_config(args),
        batch_config(args),
        args.resume,
        args.overwrite,
        validation,
    )
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {config.method} to {out}")
