"""``rsd-rerank rerank``: RankLLM requests, or any retriever's TREC run, reranked into a TREC run."""

from __future__ import annotations

import argparse
from pathlib import Path

from rsd_rerank.cli.options import (
    WINDOW_FIELDS,
    add_config_options,
    add_decoding_options,
    add_model_options,
    add_scale_options,
    batch_config,
    decoding_config,
    prompt_config,
    reranking_engine,
    window_config,
)
from rsd_rerank.runs import WindowConfig


def add_parser(sub) -> None:
    p = sub.add_parser("rerank", help="rerank RankLLM requests, or any retriever's TREC run, into a TREC run")
    add_model_options(p)
    add_scale_options(p)
    add_decoding_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--requests", help="RankLLM requests: JSONL (one per line) or a .json array")
    source.add_argument("--run", help="a TREC run to rerank (with --topics or --dataset, and a text source)")
    topics = p.add_mutually_exclusive_group()
    topics.add_argument("--topics", help="with --run: the queries, qid<TAB>text")
    topics.add_argument("--dataset", help="with --run: ir_datasets id for the queries (and, alone, the texts)")
    p.add_argument("--index", help="with --run: Lucene index storing the passages (rsd-rerank index)")
    p.add_argument("--corpus", help="with --run: JSONL corpus (_id/id, title, text/contents) holding the passages")
    p.add_argument(
        "--keep-missing",
        action="store_true",
        help="with --run: a query without topic or a passage without text is a warning and keeps its place",
    )
    add_config_options(p, WindowConfig, WINDOW_FIELDS)
    p.add_argument("--output", required=True, help="TREC run file, rewritten atomically after every batch")
    p.add_argument("--resume", action="store_true", help="skip queries already complete in --output")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (kept whole until the new run is)"
    )
    p.set_defaults(func=run)


def _print_reranked(batch: list) -> None:
    from tqdm import tqdm

    for r in batch:
        if not r.windows:
            tqdm.write(f"qid {r.qid}: {len(r.docids)} docs, nothing to order: no LLM call, passes=0")
            continue
        last = r.windows[-1]
        tqdm.write(
            f"qid {r.qid}: {len(r.docids)} docs, {len(r.windows)} window(s), prompt={r.prompt_tokens} tok, "
            f"passes={r.passes}, decode {sum(w['decode_seconds'] for w in r.windows):.2f}s"
            + (f" (batch of {last['batch']})" if last["batch"] > 1 else "")
            + f", i* (last window)={last['accepted']}"
        )


def run(args: argparse.Namespace) -> None:
    from rsd_rerank.files import discard_staging, run_destination, swap_in
    from rsd_rerank.integrations.pipeline import RunRequests, rerank_into_run, resumable
    from rsd_rerank.runs import read_run_requests

    decoding = decoding_config(args)
    prompt = prompt_config(args)
    windows = window_config(args)
    output = Path(args.output)
    if args.requests:
        if args.topics or args.dataset or args.index or args.corpus or args.keep_missing:
            raise ValueError("--topics, --dataset, --index, --corpus and --keep-missing go with --run, not --requests")
        requests = read_run_requests(args.requests)  # checked before anything is loaded or written
        made = RunRequests(requests, {}, {})
        hits = {str(r.query.qid): [(str(c.docid), c.score) for c in r.candidates] for r in requests}
    else:
        made, hits = _run_requests(args, windows)
    destination = run_destination(output, args.resume, args.overwrite)
    counts = {q: len(h) for q, h in hits.items()}
    done = resumable(output, decoding.run_tag, lambda qids: counts) if args.resume and output.exists() else {}
    todo = [r for r in made.requests if str(r.query.qid) not in done]
    try:
        with reranking_engine(args) as engine:
            run = rerank_into_run(
                engine,
                todo,
                hits,
                destination,
                decoding,
                prompt,
                batch_config(args),
                windows,
                {**made.as_is, **done},
                made.fixed,
                on_batch=_print_reranked,
            )
    except BaseException:
        discard_staging(destination, output)
        raise
    swap_in(destination, output)
    lines = sum(len(h) for h in run.values())
    print(f"wrote {lines} lines for {len(run)} queries to {output} ({len(todo)} reranked now, {len(done)} resumed)")


def _run_requests(args: argparse.Namespace, windows: WindowConfig):
    """Requests from ``--run`` with topics from ``--topics``/``--dataset`` and texts from ``--index``/``--corpus``/``--dataset``."""
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pipeline import run_requests
    from rsd_rerank.runs import read_run, warn_textless

    if not (args.topics or args.dataset):
        raise ValueError("--run needs the queries' texts: --topics FILE (qid<TAB>text) or --dataset IRDS_ID")
    sources = [name for name in ("index", "corpus") if getattr(args, name)]
    if len(sources) > 1:
        raise ValueError("give the passages' texts once: --index or --corpus (or --dataset alone)")
    if not sources and not args.dataset:
        raise ValueError("--run needs the passages' texts: --index DIR, --corpus JSONL or --dataset IRDS_ID")
    hits = {q: sorted(h, key=lambda hit: -hit[1]) for q, h in read_run(args.run).hits.items()}  # by score, stable
    if not hits:  # one rule for every input: an empty requests file is refused too
        raise ValueError(f"--run {args.run} holds no run lines; there is nothing to rerank")
    topics = datasets.queries(args.topics or args.dataset)
    if args.index:
        from rsd_rerank.integrations.pyserini import stored_contents

        contents_of = lambda docids: stored_contents(args.index, docids)  # noqa: E731
    else:
        contents_of = lambda docids: datasets.doc_contents(args.corpus or args.dataset, docids)  # noqa: E731
    made = run_requests(hits, topics, contents_of, windows.rerank_top, args.keep_missing)
    warn_textless(f"--run {args.run}", made.requests)  # hits whose stored text is empty, as in request files
    return made, hits
