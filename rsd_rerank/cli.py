"""The ``rsd-rerank`` command: parsing, progress, errors and atomic writes; the algorithms live elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rsd_rerank.decoding import METHODS, DecodingConfig
from rsd_rerank.prompt import PromptConfig

__all__ = ["main"]

log = logging.getLogger("rsd_rerank")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="'smollm2' (embedded, default), 'random-llama', or a local HF model dir"
    )
    p.add_argument("--template", default=PromptConfig.template, help="RankLLM prompt template (name or path)")
    p.add_argument("--max-passage-words", type=int, default=PromptConfig.max_passage_words)
    p.add_argument("--context-size", type=int, default=PromptConfig.context_size)
    p.add_argument("--method", choices=METHODS, default=DecodingConfig.method)
    p.add_argument("--budget", type=int, default=DecodingConfig.budget, help="T: LLM verification passes")


def _prompt_config(args: argparse.Namespace) -> PromptConfig:
    return PromptConfig(args.template, args.max_passage_words, args.context_size)


def _cmd_rerank(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from rsd_rerank.runs import read_requests, rerank_request, write_trec
    from rsd_rerank.targets import load_target

    decoding = DecodingConfig(args.method, args.budget)
    prompt = _prompt_config(args)
    requests = read_requests(args.requests)
    target = load_target(args.model)
    ranked = []
    for request in tqdm(requests, desc=f"{args.method}@{args.budget}", unit="query", file=sys.stderr):
        r = rerank_request(target, request, decoding, prompt)
        ranked.append(r)
        t = r.trace
        tqdm.write(
            f"qid {r.qid}: K={len(r.docids)} prompt={r.prompt_tokens} tok, passes={t.passes}, "
            f"prefill {t.prefill_seconds:.2f}s, decode {t.decode_seconds:.2f}s, i*={[a[0] for a in t.accepted]}"
        )
    write_trec(
        args.output, ranked, tag=f"rsd-rerank.{args.method}{'' if args.method in ('greedy', 'std') else args.budget}"
    )
    print(f"wrote {sum(len(r.docids) for r in ranked)} lines for {len(ranked)} queries to {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-rerank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rerank", help="rerank RankLLM request JSONL into a TREC run")
    _add_model_options(p)
    p.add_argument("--requests", required=True, help="RankLLM request JSONL (query + candidates per line)")
    p.add_argument("--output", required=True, help="TREC run file, written atomically")
    p.set_defaults(func=_cmd_rerank)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except ValueError as err:
        print(f"rsd-rerank {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
