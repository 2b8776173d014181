"""The ``rsd-rerank`` command: parsing, progress, errors and atomic writes; the algorithms live elsewhere."""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import logging
import sys
import textwrap
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from rsd_rerank.agent import FEATURES, K_TIED, NETWORKS, AgentConfig
from rsd_rerank.config import minimum_of
from rsd_rerank.integrations.scale import ScaleConfig
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.metrics import MEASURES
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.registry import BUDGETED, HEADS, METHODS, REGISTRY
from rsd_rerank.runs import BatchConfig, WindowConfig
from rsd_rerank.targets import DTYPES, Target, TargetConfig
from rsd_rerank.training.baselines import FINETUNED, FinetuneConfig
from rsd_rerank.training.reranker import LOSSES, TEACHERS
from rsd_rerank.training.rpo import ADVANTAGES
from rsd_rerank.training.trainer import TrainConfig

__all__ = ["build_parser", "main"]

log = logging.getLogger("rsd_rerank")

# Options built from the config dataclasses (their defaults and field docstrings are the only source).
TARGET_FIELDS = ("model", "device", "dtype", "device_map")
PROMPT_FIELDS = ("template", "max_passage_words", "context_size")
BATCH_FIELDS = ("batch_size", "max_batch_tokens", "batch_invariant")
WINDOW_FIELDS = ("rerank_top", "window_size", "stride")
SCALE_FIELDS = ("workers", "ray_address", "connect_timeout")
DECODING_FIELDS = ("method", "budget", "agent", "ranker")
FINETUNE_FIELDS = (
    "epochs",
    "lr",
    "head_rows",
    "lora_rank",
    "lora_layers",
    "bf16_autocast",
    "rank_weight",
    "save_every",
    "snapshot_every",
    "seed",
    "teacher",
    "loss",
    "lm_weight",
    "list_sizes",
    "foreign",
    "validate_every",
)
AGENT_FIELDS = ("network", "features", "temperature", "hidden", "layers", "heads")
TRAIN_FIELDS = (
    "budget",
    "group",
    "stage1_epochs",
    "stage1_lr",
    "rpo_epochs",
    "rpo_lr",
    "rpo_queries",
    "batch",
    "advantage",
    "beta",
    "val_queries",
    "save_every",
    "seed",
)
CHOICES = {
    "method": METHODS,
    "network": NETWORKS,
    "features": tuple(FEATURES),
    "advantage": ADVANTAGES,
    "dtype": DTYPES,
    "device_map": ("auto",),
    "teacher": TEACHERS,
    "loss": LOSSES,
}
GENERATED_HELP = {(DecodingConfig, "method"): "; ".join(f"{m.name}: {m.help}" for m in REGISTRY.values())}
"""Help read from a registry rather than a field's docstring (the methods' table is ``rsd_rerank.registry``)."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source: the options' help."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.replace("``", "").split())
    return docs


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _option_type(cls: type, name: str):
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    # Range limits live once, on the dataclass field (``rsd_rerank.config.bounded``); checked here at
    # parse time too, so that a bad option fails before anything loads.
    if hint is int and minimum_of(cls, name) is not None:
        return at_least(minimum_of(cls, name))
    return hint


def add_config_options(p: argparse.ArgumentParser, cls: type, names: Sequence[str], unset: Sequence[str] = ()) -> None:
    """``--field-name`` options for ``names`` of dataclass ``cls``, typed and documented from it.

    Fields in ``unset`` default to None so that a command can tell whether the user gave them.
    """
    defaults, docs = cls(), field_docs(cls)
    docs.update({name: f"{docs.get(name, '')} {text}" for (of, name), text in GENERATED_HELP.items() if of is cls})
    for name in names:
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {default})"
        if _option_type(cls, name) is bool:  # --name / --no-name, not a type that takes "False" as true
            p.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None if name in unset else default,
                help=(docs.get(name, "") + shown).replace("%", "%%"),
            )
            continue
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_option_type(cls, name),
            default=None if name in unset else default,
            choices=CHOICES.get(name),
            help=(docs.get(name, "") + shown).replace("%", "%%"),
        )


def config_from(cls: type, args: argparse.Namespace, names: Sequence[str], **fixed):
    """An instance of ``cls`` from the parsed options ``names`` (those left None take the class default)."""
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return cls(**given, **fixed)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, TargetConfig, TARGET_FIELDS)
    add_config_options(p, PromptConfig, PROMPT_FIELDS)
    add_config_options(p, BatchConfig, BATCH_FIELDS)


def _load_target(args: argparse.Namespace, model: str | None = None):
    """The target of ``--model`` (or ``model``, e.g. one of train's ``--with-model``) with the target options."""
    from rsd_rerank.targets import load_target

    config = config_from(TargetConfig, args, TARGET_FIELDS)
    return load_target(model or config.model, device=config.device, dtype=config.dtype, device_map=config.device_map)


def _add_scale_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, ScaleConfig, SCALE_FIELDS)


@contextlib.contextmanager
def _workers(args: argparse.Namespace):
    """Ray actors that each load the target (``--workers`` > 1 or ``--ray-address``), or None: this process."""
    scale = config_from(ScaleConfig, args, SCALE_FIELDS)
    if scale.workers == 1 and scale.ray_address is None:
        yield None
        return
    from rsd_rerank.integrations.scale import Workers, ray_cluster

    with ray_cluster(scale):
        yield Workers(config_from(TargetConfig, args, TARGET_FIELDS), scale)


@contextlib.contextmanager
def _engine(args: argparse.Namespace):
    """What reranks: the target loaded here, or Ray actors (``_workers``)."""
    with _workers(args) as workers:
        yield workers if workers is not None else _load_target(args)


def _batch_config(args: argparse.Namespace) -> BatchConfig:
    return config_from(BatchConfig, args, BATCH_FIELDS)


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, DecodingConfig, DECODING_FIELDS, unset=("budget", "agent"))


def _prompt_config(args: argparse.Namespace) -> PromptConfig:
    return config_from(PromptConfig, args, PROMPT_FIELDS)


def _decoding_config(args: argparse.Namespace) -> DecodingConfig:
    """The decoding options; a warning for those the method ignores (the user meant something by them)."""
    config = config_from(DecodingConfig, args, DECODING_FIELDS)
    if args.budget is not None and config.method not in BUDGETED:
        log.warning("--budget is ignored by --method %s (it uses no verification passes)", config.method)
    if args.agent is not None and config.method != "rsd":
        log.warning("--agent is ignored by --method %s (only rsd uses an agent)", config.method)
    _check_invariant(args, [config.method])
    return config


def _check_invariant(args: argparse.Namespace, methods: Sequence[str]) -> None:
    """--batch-invariant covers the methods that verify whole rankings, not the heads' tree passes."""
    trees = [m for m in methods if m in HEADS]
    if getattr(args, "batch_invariant", False) and trees:
        raise ValueError(
            f"--batch-invariant verifies whole rankings; --method {trees[0]} verifies trees of drafts in one pass "
            "and has no batch-invariant form (drop one of them)"
        )


def _windows(args: argparse.Namespace) -> WindowConfig:
    return config_from(WindowConfig, args, WINDOW_FIELDS)


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


def _cmd_rerank(args: argparse.Namespace) -> None:
    from rsd_rerank.files import discard_staging, run_destination, swap_in
    from rsd_rerank.integrations.pipeline import RunRequests, rerank_into_run, resumable
    from rsd_rerank.runs import read_run_requests

    decoding = _decoding_config(args)
    prompt = _prompt_config(args)
    windows = _windows(args)
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
        with _engine(args) as engine:
            run = rerank_into_run(
                engine,
                todo,
                hits,
                destination,
                decoding,
                prompt,
                _batch_config(args),
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


def _cmd_rank_llm(args: argparse.Namespace) -> None:
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
    code = run_rank_llm(args.rank_llm_args, _decoding_config(args), args.device, args.dtype)
    if code:
        print(f"rsd-rerank rank-llm: RankLLM's CLI exited with status {code}", file=sys.stderr)
        raise SystemExit(code)


def _cmd_index(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import index_corpus

    n = index_corpus(datasets.corpus(args.corpus or args.dataset), args.index)
    print(f"indexed {n} documents into {args.index}")


def _cmd_retrieve(args: argparse.Namespace) -> None:
    from rsd_rerank.files import atomic_write
    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.measures import evaluate
    from rsd_rerank.integrations.pyserini import bm25, request_dicts
    from rsd_rerank.runs import write_run

    topics, judged = _topics_and_qrels(args)
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
    evaluated = evaluate(judged, {qid: dict(hits) for qid, hits in runs.items()}, _measures_of(args))
    if evaluated is None:
        print("no qrels for these topics: no metrics")
        return
    values, unjudged = evaluated
    for measure, value in values.items():
        print(f"{measure}\t{value:.4f}")
    _print_unjudged(unjudged)


def _topics_and_qrels(args: argparse.Namespace) -> tuple[dict[str, str], list | None]:
    from rsd_rerank.integrations import datasets

    topics = datasets.queries(args.topics or args.dataset)
    if args.queries is not None:
        topics = dict(list(topics.items())[: args.queries])
    judged = datasets.qrels(args.qrels) if args.qrels else (datasets.qrels(args.dataset) if args.dataset else None)
    return topics, judged


def _print_unjudged(unjudged: list[str]) -> None:
    if unjudged:
        print(f"{len(unjudged)} queries have no judgments and are left out of the metrics: {', '.join(unjudged[:10])}")


def _print_metrics(metrics: dict[str, dict[str, float]], unjudged: list[str]) -> None:
    names = list(next(iter(metrics.values())))
    print("run\t" + "\t".join(names))
    for run, values in metrics.items():
        print(run + "\t" + "\t".join(f"{values.get(n, float('nan')):.4f}" for n in names))
    _print_unjudged(unjudged)


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from rsd_rerank.integrations.pipeline import pipeline

    decoding = _decoding_config(args)
    windows = config_from(WindowConfig, args, WINDOW_FIELDS[1:])  # checked before the model loads
    topics, judged = _topics_and_qrels(args)
    with _engine(args) as engine:
        result = pipeline(
            engine,
            args.index,
            topics,
            judged,
            args.output,
            decoding,
            _prompt_config(args),
            hits=args.hits,
            rerank_top=args.rerank_top,
            resume=args.resume,
            overwrite=args.overwrite,
            batching=_batch_config(args),
            windows=windows,
            measures=_measures_of(args),
        )
    print(f"reranked {result.reranked} queries ({result.resumed} already in {args.output}); run in {args.output}")
    if result.metrics is None:
        print("no qrels for these topics: no metrics")
    else:
        _print_metrics(result.metrics, result.unjudged)


def _cmd_compare(args: argparse.Namespace) -> None:
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
        topics, judged = _topics_and_qrels(args)
        _, requests = candidate_requests(args.index, topics, args.candidates, args.candidates)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods {args.methods!r} names no method")
    _check_invariant(args, methods)
    if args.agent is not None and "rsd" not in methods:
        log.warning("--agent is ignored: --methods has no rsd")
    companions = {"rsd": args.agent} if args.agent is not None else {}
    for spec in args.ranker:
        method, _, path = spec.partition("=")
        if method not in methods or not path:
            raise ValueError(f"--ranker {spec!r}: give METHOD=DIR for a method of --methods")
        companions[method] = path
    settings = (methods, args.budgets, _prompt_config(args), companions, _batch_config(args))
    with _engine(args) as engine:
        if isinstance(engine, Target):
            records, name = compare(engine, requests, judged, *settings), engine.name
            dtype = str(engine.model.dtype).removeprefix("torch.")
        else:  # Ray actors: the same chunks, records in request order (each worker logs its dtype)
            target = config_from(TargetConfig, args, TARGET_FIELDS)
            records, name, dtype = engine.compare(requests, *settings), target.model, target.dtype
    rows = summarise(records, judged, _measures_of(args))
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


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"budgets are comma-separated integers, got {text!r}") from err
    if not budgets or min(budgets) < 0:
        raise argparse.ArgumentTypeError(f"budgets must be >= 0, got {text!r}")
    return budgets


def _measures(text: str) -> list:
    from rsd_rerank.integrations.measures import parse_measures

    try:
        return parse_measures(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_measures_option(p: argparse.ArgumentParser, default: str = "nDCG@10 RR@10 R@20") -> None:
    # Parsed when the command runs (not when the parser is built): ir_measures is slow to import.
    p.add_argument(
        "--measures", type=_measures, help=f"ir_measures names, space- or comma-separated (default: {default})"
    )
    p.set_defaults(default_measures=default)


def _measures_of(args: argparse.Namespace) -> list:
    from rsd_rerank.integrations.measures import parse_measures

    return args.measures or parse_measures(args.default_measures)


def _add_topic_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    topics = p.add_mutually_exclusive_group(required=required)
    topics.add_argument("--dataset", help="ir_datasets id with queries (and qrels), e.g. beir/scifact/test")
    topics.add_argument("--topics", help="qid<TAB>text file")
    p.add_argument("--qrels", help="TREC qrels file (default: the dataset's own)")
    p.add_argument("--queries", type=at_least(1), help="only the first N queries")


def _cmd_train(args: argparse.Namespace) -> None:
    from rsd_rerank.runs import read_requests
    from rsd_rerank.training import train

    requests = read_requests(args.requests)
    ks = sorted({len(r.candidates) for r in requests})
    tied = args.network in K_TIED
    if tied and len(ks) != 1:
        raise ValueError(f"the {args.network!r} network is tied to one list length; the requests have {ks}")
    if args.with_model and (args.workers > 1 or args.ray_address):
        raise ValueError("--with-model: Ray workers (--workers, --ray-address) serve one target; drop one or the other")
    agent = config_from(AgentConfig, args, AGENT_FIELDS, k=ks[0] if tied else None)
    config = config_from(TrainConfig, args, TRAIN_FIELDS, agent=agent, prompt=_prompt_config(args))
    with _workers(args) as workers:
        agent = train(
            [_load_target(args), *(_load_target(args, model) for model in args.with_model)],
            requests,
            args.out,
            config,
            resume=args.resume,
            batching=_batch_config(args),
            overwrite=args.overwrite,
            precompute=None if workers is None else workers.cache,
        )
    for budget, m in agent.metadata["validation"].items():
        print(f"validation {budget}: " + " ".join(f"{name} {m[name]:.4f}" for name in MEASURES))
    print(f"wrote agent to {args.out}")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from rsd_rerank.companions import companion_dir
    from rsd_rerank.runs import read_requests
    from rsd_rerank.training.baselines import finetune

    requests = read_requests(args.requests)[: args.queries]
    validation = read_requests(args.val_requests) if args.val_requests else None
    config = config_from(FinetuneConfig, args, FINETUNE_FIELDS, method=args.method)
    if validation and not (config.method == "reranker" and config.validate_every):
        raise ValueError("--val-requests goes with --method reranker and --validate-every N")
    target = _load_target(args)
    out = Path(args.out) if args.out else companion_dir(target, config.method)
    summary = finetune(
        target,
        requests,
        config,
        out,
        _prompt_config(args),
        _batch_config(args),
        args.resume,
        args.overwrite,
        validation,
    )
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {config.method} to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-rerank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rerank", help="rerank RankLLM requests, or any retriever's TREC run, into a TREC run")
    _add_model_options(p)
    _add_scale_options(p)
    _add_decoding_options(p)
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
    p.set_defaults(func=_cmd_rerank)

    p = sub.add_parser(
        "rank-llm",
        help="RankLLM's own CLI with --model-path rsd:TARGET running RSD (decoding options before its command)",
    )
    _add_decoding_options(p)
    add_config_options(p, TargetConfig, ("device", "dtype"))
    p.add_argument(
        "rank_llm_args",
        nargs=argparse.REMAINDER,
        help="RankLLM CLI arguments, e.g. rerank --model-path rsd:random-llama --requests-file F --output-trec-file T",
    )
    p.set_defaults(func=_cmd_rank_llm)

    p = sub.add_parser("index", help="index a corpus flat with Pyserini (contents = title + text)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="ir_datasets id, e.g. beir/scifact")
    source.add_argument("--corpus", help="JSONL corpus with _id/id, title, text")
    p.add_argument("--index", required=True, help="new index folder")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("retrieve", help="BM25 (k1 0.9, b 0.4) into a TREC run; metrics where qrels exist")
    p.add_argument("--index", required=True)
    _add_topic_options(p)
    p.add_argument("--exclude", help="drop the queries of these topics (e.g. beir/scifact/test for training claims)")
    p.add_argument("--hits", type=at_least(1), default=1000)
    p.add_argument("--output", required=True, help="TREC run file, written atomically")
    p.add_argument("--requests", help="also write each query's top --candidates hits as RankLLM request JSONL")
    p.add_argument("--candidates", type=at_least(1), default=20, help="hits per request in --requests (default 20)")
    _add_measures_option(p, "nDCG@10 R@100 R@1000")
    p.set_defaults(func=_cmd_retrieve)

    p = sub.add_parser("pipeline", help="BM25 → rerank the top k → TREC run → metrics next to BM25's")
    _add_model_options(p)
    _add_scale_options(p)
    _add_decoding_options(p)
    p.add_argument("--index", required=True, help="Lucene index (rsd-rerank index)")
    _add_topic_options(p)
    p.add_argument("--hits", type=at_least(1), default=100, help="BM25 hits per query kept in the run")
    p.add_argument(
        "--rerank-top",
        type=at_least(1),
        default=20,
        help="hits reranked of the --hits retrieved: 20, the paper's K, one window (rerank takes a run whole by "
        "default: its file says what to rerank; windows beyond --window-size as RankLLM's)",
    )
    add_config_options(p, WindowConfig, WINDOW_FIELDS[1:])
    _add_measures_option(p)
    p.add_argument("--output", required=True, help="TREC run, rewritten atomically after every batch of queries")
    p.add_argument("--resume", action="store_true", help="skip queries already in --output")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (kept whole until the new run is)"
    )
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("compare", help="every decoder on the same candidate lists: fidelity, nDCG@10, seconds")
    _add_model_options(p)
    _add_scale_options(p)
    p.add_argument("--requests", help="RankLLM request JSONL (instead of --index + --dataset)")
    p.add_argument("--index", help="Lucene index for BM25 candidates")
    _add_topic_options(p, required=False)
    p.add_argument("--candidates", type=at_least(1), default=20, help="BM25 hits per query to rerank (K)")
    p.add_argument("--methods", default="generate,first,std,gsd,consensus,rsd,greedy")
    p.add_argument("--budgets", type=_budgets, default=[1, 3, 5, 7], help="T values for the budgeted methods")
    _add_measures_option(p)
    add_config_options(p, DecodingConfig, ["agent"])
    p.add_argument(
        "--ranker",
        action="append",
        default=[],
        metavar="METHOD=DIR",
        help="a baseline's heads, fine-tuned ranker or drafter (default: where `rsd-rerank finetune` puts them); repeat",
    )
    p.add_argument("--out", required=True, help="output stem: writes .json, .md, .png")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("train", help="train an RSD agent against a target LLM (Stage I + RPO)")
    _add_model_options(p)
    _add_scale_options(p)
    p.add_argument("--requests", required=True, help="training requests (RankLLM JSONL); never the test queries")
    p.add_argument("--out", required=True, help="checkpoint folder (agent.json, model.safetensors, train_state.pt)")
    p.add_argument(
        "--with-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="another target (as --model) whose rankings of the same requests train the same agent; repeat (one "
        "agent across targets: the bundled universal agent's recipe)",
    )
    add_config_options(p, AgentConfig, AGENT_FIELDS)
    add_config_options(p, TrainConfig, TRAIN_FIELDS)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an agent or a run already in --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "finetune",
        help="train a baseline on the target's own greedy rankings: heads (blockwise, medusa) or a LoRA ranker "
        "(first-ft, rankzephyr-ft); or make the target a listwise reranker (reranker: the smollm2-reranker recipe)",
    )
    _add_model_options(p)
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
    p.set_defaults(func=_cmd_finetune)
    return parser


def _inputs_and_outputs(args: argparse.Namespace) -> tuple[list, list[tuple[Path, bool]]]:
    """The files a command reads and the files (False) or folders (True) it writes."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    inputs = [
        get("requests") if args.command != "retrieve" else None,
        get("run"),
        get("topics"),
        get("qrels"),
        get("corpus"),
        get("val_requests"),
    ]
    outputs: list[tuple[Path, bool]] = []
    if args.command in ("rerank", "retrieve", "pipeline"):
        outputs.append((Path(args.output), False))
    if args.command == "retrieve" and args.requests:
        outputs.append((Path(args.requests), False))
    if args.command == "compare":
        outputs += [(Path(args.out).with_suffix(suffix), False) for suffix in (".json", ".md", ".png")]
    if args.command == "train" or (args.command == "finetune" and args.out):
        outputs.append((Path(args.out), True))
    if args.command == "index":
        outputs.append((Path(args.index), True))
    return inputs, outputs


def _guarded(args: argparse.Namespace) -> None:
    """Run the command once its outputs are known to be writable, distinct from its inputs and locked."""
    from rsd_rerank.files import check_writable, distinct_paths, locked
    from rsd_rerank.targets import check_target_name

    for model in [getattr(args, "model", None), *getattr(args, "with_model", [])]:
        if model is not None:  # an unknown name is refused offline, before any work
            check_target_name(model)
    inputs, outputs = _inputs_and_outputs(args)
    distinct_paths(inputs, [path for path, _ in outputs])
    for path, directory in outputs:
        check_writable(path, directory=directory)
    if args.command == "train":
        from rsd_rerank.targets import cache_dir

        check_writable(cache_dir(), directory=True, what="cache folder (RSD_RERANK_CACHE)")
    with contextlib.ExitStack() as stack:
        for path, _ in outputs:
            stack.enter_context(locked(path))
        args.func(args)


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """A first run prints what the user asked for: progress bars, results, this project's warnings.
    Without ``-v``: no INFO lines from libraries (ir_datasets logs at INFO with its own handlers, so
    only ``logging.disable`` reaches it), no transformers deprecation notices, no Pyserini
    ``SyntaxWarning``s and no Lucene vectorization notice (``integrations.pyserini``)."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    hf_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(transformers|torch)(\.|$)")
            yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(hf_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with _quiet_libraries(args.verbose):
            _guarded(args)
    except (ValueError, RuntimeError, OSError) as err:
        # Bad input (ValueError) and the environment (a missing model, a full disk, no JVM) both reach
        # the user as one line; the traceback is for -v.
        if args.verbose:
            traceback.print_exc()
        print(f"rsd-rerank {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every output is written atomically: what is on disk is whole, and --resume continues it.
        print(
            f"rsd-rerank {args.command}: interrupted; outputs on disk are complete up to the last write",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
