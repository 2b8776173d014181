"""``rsd-rerank train``: an RSD agent trained against one target, or several (Stage I + RPO)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import NamedTuple

from rsd_rerank.agent import K_TIED, AgentConfig
from rsd_rerank.cli.options import (
    AGENT_FIELDS,
    TRAIN_FIELDS,
    add_config_options,
    add_model_options,
    add_scale_options,
    batch_config,
    config_from,
    prompt_config,
    ray_workers,
    target_from,
)
from rsd_rerank.metrics import MEASURES
from rsd_rerank.training.trainer import TrainConfig


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an RSD agent against a target LLM (Stage I + RPO)")
    add_model_options(p)
    add_scale_options(p)
    p.add_argument("--requests", required=True, help="training requests (RankLLM JSONL); never the test queries")
    p.add_argument("--out", required=True, help="checkpoint folder (agent.json, model.safetensors, train_state.pt)")
    p.add_argument(
        "--with-model",
        action="append",
        default=[],
        type=with_model,
        metavar="MODEL[@TEMPLATE]",
        help="another target (as --model) whose rankings of the same requests train the same agent; repeat (one "
        "agent across targets: the bundled universal agent's recipe). @TEMPLATE prompts it with another RankLLM "
        "template, e.g. smollm2@rank_zephyr_template.yaml (numbers as identifiers)",
    )
    add_config_options(p, AgentConfig, AGENT_FIELDS)
    add_config_options(p, TrainConfig, TRAIN_FIELDS)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an agent or a run already in --out")
    p.set_defaults(func=run)


class WithModel(NamedTuple):
    """A ``--with-model`` target: the model (as ``--model``) and its own template (None: ``--template``)."""

    model: str
    template: str | None


def with_model(spec: str) -> WithModel:
    """``MODEL[@TEMPLATE]``; the template is checked here, before any model loads."""
    from rsd_rerank.prompt import numeric_identifiers

    model, at, template = spec.partition("@")
    if not model or (at and not template):
        raise argparse.ArgumentTypeError(f"{spec!r}: give MODEL or MODEL@TEMPLATE")
    if template:
        try:
            numeric_identifiers(template)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return WithModel(model, template or None)


def run(args: argparse.Namespace) -> None:
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
    config = config_from(TrainConfig, args, TRAIN_FIELDS, agent=agent, prompt=prompt_config(args))
    with ray_workers(args) as workers:
        agent = train(
            [target_from(args), *(target_from(args, w.model) for w in args.with_model)],
            requests,
            args.out,
            config,
            resume=args.resume,
            batching=batch_config(args),
            overwrite=args.overwrite,
            precompute=None if workers is None else workers.cache,
            prompts=[
                config.prompt,
                *(
                    dataclasses.replace(config.prompt, template=w.template or config.prompt.template)
                    for w in args.with_model
                ),
            ],
        )
    for budget, m in agent.metadata["validation"].items():
        print(f"validation {budget}: " + " ".join(f"{name} {m[name]:.4f}" for name in MEASURES))
    print(f"wrote agent to {args.out}")
