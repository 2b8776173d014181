"""``rsd-rerank rank-llm``: RankLLM's own CLI, with ``--model-path rsd:TARGET`` running RSD."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsd_rerank.cli.options import (
    add_config_options,
    add_decoding_options,
    decoding_config,
)
from rsd_rerank.targets import TargetConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rank-llm",
        help="RankLLM's own CLI with --model-path rsd:TARGET running RSD (decoding options before its command)",
    )
    add_decoding_options(p)
    add_config_options(p, TargetConfig, ("device", "dtype"))
    p.add_argument(
        "rank_llm_args",
        nargs=argparse.REMAINDER,
        help="RankLLM CLI arguments, e.g. rerank --model-path rsd:random-llama --requests-file F --output-trec-file T",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations.rank_llm_cli import PREFIX, run_rank_llm
    from rsd_rerank.targets import check_target_name

    if not args.rank_llm_args:
        raise ValueError("give RankLLM's CLI arguments, e.g. rerank --model-path rsd:random-llama --requests-file F")
    given = [a.split("=", 1) if a.startswith("--model-path=") else [a] for a in args.rank_llm_args]
    words = [w for parts in given for w in parts]
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--model-path" and value.startswith(PREFIX):  # refused here, offline, before RankLLM starts
            check_target_name(value[len(PREFIX) :] or None)
        if flag == "--requests-file" and not Path(value).is_file():  # RankLLM exits 5 on it without a word
            raise ValueError(f"--requests-file {value}: no such file")
    code = run_rank_llm(args.rank_llm_args, decoding_config(args), args.device, args.dtype)
    if code:
        print(f"rsd-rerank rank-llm: RankLLM's CLI exited with status {code}", file=sys.stderr)
        raise SystemExit(code)
