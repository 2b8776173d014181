"""Decoding methods by name: the one place that maps a ``DecodingConfig`` to what the loop runs.

``greedy`` is the exact target (the session's constrained greedy ranking); ``std`` is the loop at
budget 0; ``gsd``, ``consensus``, ``pdm``, ``sdm``, ``first-sd`` and ``rsd`` are the loop with that
proposer under the budget; ``blockwise`` and ``medusa`` decode with prediction heads
(``decoding.tree_decode``); ``first-ft`` and ``rankzephyr-ft`` are STD on the target fine-tuned on
its own rankings (``rsd_rerank.companions``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rsd_rerank.agent import AgentProposer, resolve_agent
from rsd_rerank.companions import heads_widths, load_heads, load_ranker
from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.decoding import Decoded, decode_drafts_many, decode_many, traced, tree_decode
from rsd_rerank.proposers import PROPOSERS, DrafterProposer, GSDProposer, JacobiProposer, Proposer
from rsd_rerank.registry import BUDGETED, HEADS, METHODS, RANKER_OF, REGISTRY, TRAINED_BASELINES
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, load_target, tokenizer_fingerprint

__all__ = [
    "BUDGETED",
    "METHODS",
    "TRAINED_BASELINES",
    "DecodingConfig",
    "decoding_with",
    "proposer_for",
    "rank",
    "rank_many",
]


@dataclass(frozen=True)
class DecodingConfig:
    """How a candidate list is decoded."""

    method: str = "rsd-drafts"
    """The decoding method (``rsd_rerank.registry``: the README's methods table). The default verifies the
    agent's, GSD's and PDM's drafts together each pass: it keeps the longest verified prefix, so it never
    verifies less than ``rsd`` (the paper's single draft) and stays level with GSD on models that copy their
    input order, where an agent not trained on the model falls behind (issue #32), at about 2× a pass's tokens."""
    budget: int = bounded(5, 0)
    """T: LLM verification passes after the prompt (the budgeted methods: gsd, consensus, rsd, rsd-drafts, sdm, blockwise, medusa, pdm, first-sd)."""
    agent: str | None = None
    """``rsd`` and ``rsd-drafts`` only: an agent checkpoint directory or a bundled agent's name; None picks the bundled
    agent trained on the target."""
    ranker: str | None = None
    """The baselines' companion: heads (``blockwise``, ``medusa``) or fine-tuned ranker (``first-ft``,
    ``rankzephyr-ft``, ``first-sd``) directory, None for the default one ``rsd-rerank finetune`` makes;
    ``sdm``'s drafter model (a target name or directory sharing the tokenizer), None for the target's
    own first-slot order."""

    @property
    def run_tag(self) -> str:
        """The TREC run tag: ``rsd-rerank.<method>`` with T appended for budgeted methods (``rsd-rerank.gsd5``)."""
        return f"rsd-rerank.{self.method}{self.budget if self.method in BUDGETED else ''}"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        check_ranges(self)
        if self.ranker is not None and REGISTRY[self.method].companion in (None, "agent"):
            raise ValueError(f"--ranker is for sdm, {', '.join(HEADS)} and {', '.join(RANKER_OF)}, not {self.method}")


def decoding_with(method: str, budget: int, companion: str | None) -> DecodingConfig:
    """``method`` under ``budget`` with its companion (None: the default one) where the registry puts it:
    ``agent`` for the methods that take an agent (rsd, rsd-drafts), ``ranker`` for the rest."""
    where = "agent" if REGISTRY[method].companion == "agent" else "ranker"
    return DecodingConfig(method, budget, **{where: companion})


def proposer_for(config: DecodingConfig, session: TargetSession, query: int = 0) -> Proposer:
    """The proposer of a loop method for one query of ``session`` (``std`` never calls it: budget 0)."""
    if config.method == "rsd":
        # Built on the target's device: every tensor of the loop lives there.
        return AgentProposer(resolve_agent(config.agent, session.target, session.ks[query]).to(session.device))
    if config.method == "std":
        return GSDProposer()
    if config.method not in PROPOSERS:
        raise ValueError(f"method {config.method!r} is not a proposer of the decoding loop")
    return PROPOSERS[config.method]()


def rank_many(
    session: TargetSession, config: DecodingConfig = DecodingConfig(), queries: list[int] | None = None
) -> dict[int, Decoded]:
    """Rank the candidates of ``queries`` (default: all of the session's) with ``config.method`` under
    ``config.budget``, all queries in the same forwards."""
    queries = list(range(len(session.prompts))) if queries is None else queries
    runs = REGISTRY[config.method].runs
    if runs == "target":
        start, before = session.clock(), list(session.query_passes)
        rankings = session.greedy_rankings(queries)
        return {
            q: Decoded(torch.tensor([rankings[q]], device=session.device), traced(session, start, before[q], q))
            for q in queries
        }
    if runs == "heads":
        heads = load_heads(config.ranker, session.target, config.method)
        widths = heads_widths(config.method, heads)
        return {q: tree_decode(session, heads, widths, config.budget, q) for q in queries}
    if runs == "drafts":
        agents = _proposers(dataclasses.replace(config, method="rsd"), session, queries)
        drafters = {q: [agents[q], GSDProposer(), JacobiProposer()] for q in queries}
        return decode_drafts_many(session, drafters, config.budget)
    if runs == "drafted":
        return _drafted(session, config, queries)
    budget = 0 if config.method == "std" else config.budget
    return decode_many(session, _proposers(config, session, queries), budget)


def _proposers(config: DecodingConfig, session: TargetSession, queries: list[int]) -> dict[int, Proposer]:
    """Each query's proposer: one per list length, shared by the queries (it holds no state)."""
    by_k: dict[int, Proposer] = {}
    for q in queries:
        if session.ks[q] not in by_k:
            by_k[session.ks[q]] = proposer_for(config, session, q)
    return {q: by_k[session.ks[q]] for q in queries}


def _drafter(session: TargetSession, config: DecodingConfig) -> Target | None:
    """The model whose first-slot order drafts (None: the target's own)."""
    if config.method in RANKER_OF:
        return load_ranker(config.ranker, session.target, config.method)
    if config.ranker is None:
        return None
    target = session.target
    drafter = load_target(config.ranker, device=str(target.model.device), dtype=str(target.model.dtype).split(".")[-1])
    if tokenizer_fingerprint(drafter.tokenizer) != tokenizer_fingerprint(target.tokenizer):
        raise ValueError(f"sdm's drafter {config.ranker!r} does not share the target's tokenizer")
    return drafter


def _drafts(session: TargetSession, config: DecodingConfig, queries: list[int]) -> tuple[dict, float]:
    """The drafter's [K] scores per query and the seconds of its prefill (with loading)."""
    key = (RANKER_OF.get(config.method), config.ranker, tuple(queries))
    # Kept on the session (it lives as long as the prompts it scored): runs of one session under
    # several budgets prefill the drafter once, and each is charged its seconds.
    memo = session.drafts
    if key not in memo:
        start = session.clock()
        drafter = _drafter(session, config)
        if drafter is None:
            scores = {q: session.first_slot(q) for q in queries}
        else:  # the drafter reads the same prompts (same tokenizer): its own prefill, timed with the method
            drafting = TargetSession.from_prompts(drafter, [session.prompts[q] for q in queries])
            scores = {q: drafting.first_slot(i).to(session.device) for i, q in enumerate(queries)}
        memo[key] = (scores, session.clock() - start)
    return memo[key]


def _drafted(session: TargetSession, config: DecodingConfig, queries: list[int]) -> dict[int, Decoded]:
    """``sdm``, ``first-sd`` (a drafter's first-slot order verified under the budget) and ``first-ft``,
    ``rankzephyr-ft`` (a fine-tuned ranker's first-slot order, no pass of the target)."""
    scores, drafting_seconds = _drafts(session, config, queries)
    budget = config.budget if config.method in BUDGETED else 0  # the fine-tunes: their first-slot order alone
    proposers = {q: DrafterProposer(scores[q], budget) for q in queries}
    decoded = decode_many(session, proposers, budget, initial=scores)
    for d in decoded.values():
        d.trace.decode_seconds += drafting_seconds
    return decoded


def rank(session: TargetSession, config: DecodingConfig = DecodingConfig(), query: int = 0) -> Decoded:
    """Rank one query's candidates with ``config.method`` under ``config.budget``."""
    return rank_many(session, config, [query])[query]
