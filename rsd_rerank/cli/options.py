"""The options every sub-command shares, built once from the config dataclasses (their defaults and
field docstrings are the only source of an option's default and help), and the configs read back from them."""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import logging
import textwrap
import types
import typing
from collections.abc import Sequence

from rsd_rerank.agent import FEATURES, NETWORKS
from rsd_rerank.config import minimum_of
from rsd_rerank.integrations.scale import ScaleConfig
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.registry import BUDGETED, HEADS, METHODS, REGISTRY
from rsd_rerank.runs import BatchConfig, WindowConfig
from rsd_rerank.targets import DTYPES, TargetConfig
from rsd_rerank.training.reranker import LOSSES, TEACHERS
from rsd_rerank.training.rpo import ADVANTAGES

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
    "accumulate",
    "cue",
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


def option_type(cls: type, name: str):
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
        if option_type(cls, name) is bool:  # --name / --no-name, not a type that takes "False" as true
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
            type=option_type(cls, name),
            default=None if name in unset else default,
            choices=CHOICES.get(name),
            help=(docs.get(name, "") + shown).replace("%", "%%"),
        )


def config_from(cls: type, args: argparse.Namespace, names: Sequence[str], **fixed):
    """An instance of ``cls`` from the parsed options ``names`` (those left None take the class default)."""
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return cls(**given, **fixed)


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, TargetConfig, TARGET_FIELDS)
    add_config_options(p, PromptConfig, PROMPT_FIELDS)
    add_config_options(p, BatchConfig, BATCH_FIELDS)


def target_from(args: argparse.Namespace, model: str | None = None):
    """The target of ``--model`` (or ``model``, e.g. one of train's ``--with-model``) with the target options."""
    from rsd_rerank.targets import load_target

    config = config_from(TargetConfig, args, TARGET_FIELDS)
    return load_target(model or config.model, device=config.device, dtype=config.dtype, device_map=config.device_map)


def add_scale_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, ScaleConfig, SCALE_FIELDS)


@contextlib.contextmanager
def ray_workers(args: argparse.Namespace):
    """Ray actors that each load the target (``--workers`` > 1 or ``--ray-address``), or None: this process."""
    scale = config_from(ScaleConfig, args, SCALE_FIELDS)
    if scale.workers == 1 and scale.ray_address is None:
        yield None
        return
    from rsd_rerank.integrations.scale import Workers, ray_cluster

    with ray_cluster(scale):
        yield Workers(config_from(TargetConfig, args, TARGET_FIELDS), scale)


@contextlib.contextmanager
def reranking_engine(args: argparse.Namespace):
    """What reranks: the target loaded here, or Ray actors (``ray_workers``)."""
    with ray_workers(args) as workers:
        yield workers if workers is not None else target_from(args)


def batch_config(args: argparse.Namespace) -> BatchConfig:
    return config_from(BatchConfig, args, BATCH_FIELDS)


def add_decoding_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p, DecodingConfig, DECODING_FIELDS, unset=("budget", "agent"))


def prompt_config(args: argparse.Namespace) -> PromptConfig:
    return config_from(PromptConfig, args, PROMPT_FIELDS)


def decoding_config(args: argparse.Namespace) -> DecodingConfig:
    """The decoding options; a warning for those the method ignores (the user meant something by them)."""
    config = config_from(DecodingConfig, args, DECODING_FIELDS)
    if args.budget is not None and config.method not in BUDGETED:
        log.warning("--budget is ignored by --method %s (it uses no verification passes)", config.method)
    if args.agent is not None and REGISTRY[config.method].companion != "agent":
        log.warning("--agent is ignored by --method %s (only rsd and rsd-drafts use an agent)", config.method)
    check_invariant(args, [config.method])
    return config


def check_invariant(args: argparse.Namespace, methods: Sequence[str]) -> None:
    """--batch-invariant covers the methods that verify whole rankings, not the heads' tree passes."""
    trees = [m for m in methods if m in HEADS]
    if getattr(args, "batch_invariant", False) and trees:
        raise ValueError(
            f"--batch-invariant verifies whole rankings; --method {trees[0]} verifies trees of drafts in one pass "
            "and has no batch-invariant form (drop one of them)"
        )


def window_config(args: argparse.Namespace) -> WindowConfig:
    return config_from(WindowConfig, args, WINDOW_FIELDS)


def budget_list(text: str) -> list[int]:
    try:
        budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"budgets are comma-separated integers, got {text!r}") from err
    if not budgets or min(budgets) < 0:
        raise argparse.ArgumentTypeError(f"budgets must be >= 0, got {text!r}")
    return budgets


def measure_list(text: str) -> list:
    from rsd_rerank.integrations.measures import parse_measures

    try:
        return parse_measures(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_measures_option(p: argparse.ArgumentParser, default: str = "nDCG@10 RR@10 R@20") -> None:
    # Parsed when the command runs (not when the parser is built): ir_measures is slow to import.
    p.add_argument(
        "--measures", type=measure_list, help=f"ir_measures names, space- or comma-separated (default: {default})"
    )
    p.set_defaults(default_measures=default)


def measures_of(args: argparse.Namespace) -> list:
    from rsd_rerank.integrations.measures import parse_measures

    return args.measures or parse_measures(args.default_measures)


def add_topic_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    topics = p.add_mutually_exclusive_group(required=required)
    topics.add_argument("--dataset", help="ir_datasets id with queries (and qrels), e.g. beir/scifact/test")
    topics.add_argument("--topics", help="qid<TAB>text file")
    p.add_argument("--qrels", help="TREC qrels file (default: the dataset's own)")
    p.add_argument("--queries", type=at_least(1), help="only the first N queries")


def topics_and_qrels(args: argparse.Namespace) -> tuple[dict[str, str], list | None]:
    from rsd_rerank.integrations import datasets

    topics = datasets.queries(args.topics or args.dataset)
    if args.queries is not None:
        topics = dict(list(topics.items())[: args.queries])
    judged = datasets.qrels(args.qrels) if args.qrels else (datasets.qrels(args.dataset) if args.dataset else None)
    return topics, judged


def print_unjudged(unjudged: list[str]) -> None:
    if unjudged:
        print(f"{len(unjudged)} queries have no judgments and are left out of the metrics: {', '.join(unjudged[:10])}")


def print_metrics(metrics: dict[str, dict[str, float]], unjudged: list[str]) -> None:
    names = list(next(iter(metrics.values())))
    print("run\t" + "\t".join(names))
    for run, values in metrics.items():
        print(run + "\t" + "\t".join(f"{values.get(n, float('nan')):.4f}" for n in names))
    print_unjudged(unjudged)
