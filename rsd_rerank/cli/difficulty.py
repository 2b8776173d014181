"""``rsd-rerank difficulty``: is RSD worth it on this model? Every fast method's fidelity, the target's
difficulty figures, and which method to use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsd_rerank.cli.options import (
    PROMPT_FIELDS,
    TARGET_FIELDS,
    add_config_options,
    at_least,
    budget_list,
    prompt_config,
    target_from,
)
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.targets import TargetConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "difficulty",
        help="is RSD worth it on this model: GSD, consensus, PDM, RSD and RSD-drafts at each budget, the target's "
        "difficulty and content figures, and which method to use",
    )
    add_config_options(p, TargetConfig, TARGET_FIELDS)
    add_config_options(p, PromptConfig, PROMPT_FIELDS)
    p.add_argument("--requests", required=True, help="RankLLM request JSONL: the candidate lists, in their given order")
    p.add_argument("--queries", type=at_least(1), default=20, help="only the first N requests (default: 20)")
    p.add_argument("--qrels", help="TREC qrels file: nDCG@10 of the greedy ranking and of the request order")
    p.add_argument("--budgets", type=budget_list, default=[1, 3, 5], help="T values for every method (default: 1,3,5)")
    add_config_options(p, DecodingConfig, ["agent"])
    p.add_argument(
        "--out",
        help="output stem: writes .json and .md, and keeps each request's figures in .claims.jsonl so that an "
        "interrupted run resumes (without it the report is only printed)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.agent import default_agent, resolve_agent
    from rsd_rerank.files import atomic_write, stem_file
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.difficulty import claim_records, judged_by_query, markdown, summarise
    from rsd_rerank.runs import read_requests

    requests = read_requests(args.requests)[: args.queries]
    judged = judged_by_query(datasets.qrels(args.qrels)) if args.qrels else None
    prompt = prompt_config(args)
    target = target_from(args)
    for k in sorted({len(r.candidates) for r in requests}):
        resolve_agent(args.agent, target, k)  # a wrong --agent is refused before any work
    claims = stem_file(Path(args.out), ".claims.jsonl") if args.out else None
    if claims is not None:
        claims.parent.mkdir(parents=True, exist_ok=True)
    records = claim_records(target, requests, prompt, args.budgets, args.agent, judged, claims)
    meta = {
        "target": target.name,
        "requests": str(args.requests),
        "max_passage_words": prompt.max_passage_words,
        "template": prompt.template,
        "device": str(target.model.device),
        "dtype": str(target.model.dtype).removeprefix("torch."),
        "agent": args.agent or default_agent(target.name),
    }
    summary = summarise(records, args.budgets, meta)
    report = markdown(summary)
    if args.out:
        atomic_write(stem_file(Path(args.out), ".json"), json.dumps(summary, indent=2) + "\n")
        atomic_write(stem_file(Path(args.out), ".md"), report)
    print(report)
