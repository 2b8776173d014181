"""Decoding methods by name: the one place that maps a ``DecodingConfig`` to what the loop runs.

``greedy`` is the exact target (the session's constrained greedy ranking); ``std`` is the loop at
budget 0; ``gsd``, ``consensus`` and ``rsd`` are the loop with that proposer under the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsd_rerank.agent import AgentProposer, resolve_agent
from rsd_rerank.decoding import Decoded, decode_many, traced
from rsd_rerank.proposers import PROPOSERS, GSDProposer, Proposer
from rsd_rerank.session import TargetSession

__all__ = ["BUDGETED", "METHODS", "DecodingConfig", "proposer_for", "rank", "rank_many"]

METHODS = ("greedy", "std", "gsd", "consensus", "rsd")
"""``greedy``: the exact target (K-1 decode steps); ``std``: first-slot order, no pass;
``gsd``/``consensus``/``rsd``: up-to-down decoding with that proposer under the budget (``rsd``: the
learned agent, ``rsd_rerank.agent``)."""
BUDGETED = ("gsd", "consensus", "rsd")
"""The methods whose result depends on the budget T."""


@dataclass(frozen=True)
class DecodingConfig:
    """How a candidate list is decoded."""

    method: str = "rsd"
    """One of ``METHODS``."""
    budget: int = 5
    """T: LLM verification passes after the prompt (gsd, consensus and rsd only)."""
    agent: str | None = None
    """``rsd`` only: an agent checkpoint directory or a bundled agent's name; None picks the bundled
    agent trained on the target."""

    @property
    def run_tag(self) -> str:
        """The TREC run tag: ``rsd-rerank.<method>`` with T appended for budgeted methods (``rsd-rerank.gsd5``)."""
        return f"rsd-rerank.{self.method}{self.budget if self.method in BUDGETED else ''}"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.budget < 0:
            raise ValueError(f"the budget must be >= 0 passes, got {self.budget}")


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
    if config.method == "greedy":
        start, before = session.clock(), list(session.query_passes)
        rankings = session.greedy_rankings(queries)
        return {
            q: Decoded(torch.tensor([rankings[q]], device=session.device), traced(session, start, before[q], q))
            for q in queries
        }
    budget = 0 if config.method == "std" else config.budget
    by_k: dict[int, Proposer] = {}  # one agent per list length, shared by the queries (it holds no state)
    for q in queries:
        if session.ks[q] not in by_k:
            by_k[session.ks[q]] = proposer_for(config, session, q)
    return decode_many(session, {q: by_k[session.ks[q]] for q in queries}, budget)


def rank(session: TargetSession, config: DecodingConfig = DecodingConfig(), query: int = 0) -> Decoded:
    """Rank one query's candidates with ``config.method`` under ``config.budget``."""
    return rank_many(session, config, [query])[query]
