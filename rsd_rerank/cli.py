"""The ``rsd-rerank`` command: parsing, progress, errors and atomic writes; the algorithms live elsewhere."""

from __future__ import annotations

import argparse
import json
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


def _cmd_index(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import index_corpus

    n = index_corpus(datasets.corpus(args.corpus or args.dataset), args.index)
    print(f"indexed {n} documents into {args.index}")


def _cmd_retrieve(args: argparse.Namespace) -> None:
    import ir_measures

    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import bm25, stored_contents
    from rsd_rerank.runs import atomic_write, request_records

    topics = datasets.queries(args.topics or args.dataset)
    if args.exclude:
        held_out = datasets.queries(args.exclude)
        topics = {qid: text for qid, text in topics.items() if qid not in held_out}
        print(f"{len(topics)} queries after excluding the {len(held_out)} of {args.exclude}")
    runs = bm25(args.index, topics, args.hits)
    lines = [f"{qid} Q0 {d} {r} {score:.6f} bm25" for qid, hits in runs.items() for r, (d, score) in enumerate(hits, 1)]
    atomic_write(args.output, "".join(line + "\n" for line in lines))
    print(f"wrote {len(lines)} lines for {len(runs)} queries to {args.output}")
    if args.requests:
        top = {d for hits in runs.values() for d, _ in hits[: args.candidates]}
        records = request_records(runs, topics, stored_contents(args.index, top), args.candidates)
        atomic_write(args.requests, "".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {len(records)} RankLLM requests (top {args.candidates}) to {args.requests}")
    judged = datasets.qrels(args.qrels) if args.qrels else (datasets.qrels(args.dataset) if args.dataset else None)
    if judged is None:
        print("no qrels for these topics: no metrics")
        return
    run = {qid: {d: s for d, s in hits} for qid, hits in runs.items()}
    measures = [ir_measures.nDCG @ 10, ir_measures.R @ 100, ir_measures.R @ 1000]
    for measure, value in ir_measures.calc_aggregate(measures, judged, run).items():
        print(f"{measure}\t{value:.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-rerank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rerank", help="rerank RankLLM request JSONL into a TREC run")
    _add_model_options(p)
    p.add_argument("--requests", required=True, help="RankLLM request JSONL (query + candidates per line)")
    p.add_argument("--output", required=True, help="TREC run file, written atomically")
    p.set_defaults(func=_cmd_rerank)

    p = sub.add_parser("index", help="index a corpus flat with Pyserini (contents = title + text)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="ir_datasets id, e.g. beir/scifact")
    source.add_argument("--corpus", help="JSONL corpus with _id/id, title, text")
    p.add_argument("--index", required=True, help="new index folder")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("retrieve", help="BM25 (k1 0.9, b 0.4) into a TREC run; metrics where qrels exist")
    p.add_argument("--index", required=True)
    topics = p.add_mutually_exclusive_group(required=True)
    topics.add_argument("--dataset", help="ir_datasets id with queries, e.g. beir/scifact/test")
    topics.add_argument("--topics", help="qid<TAB>text file")
    p.add_argument("--qrels", help="TREC qrels file (default: the dataset's own)")
    p.add_argument("--exclude", help="drop the queries of these topics (e.g. beir/scifact/test for training claims)")
    p.add_argument("--hits", type=int, default=1000)
    p.add_argument("--output", required=True, help="TREC run file, written atomically")
    p.add_argument("--requests", help="also write each query's top --candidates hits as RankLLM request JSONL")
    p.add_argument("--candidates", type=int, default=20, help="hits per request in --requests (default 20)")
    p.set_defaults(func=_cmd_retrieve)
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
