"""Decoding methods by name: the one place that maps a ``DecodingConfig`` to what the loop runs.

``greedy`` is the exact target (the session's constrained greedy ranking); ``std`` is the loop at
budget 0; ``gsd``, ``consensus`` and ``rsd`` are the loop with that proposer under the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsd_rerank.agent import AgentProposer, resolve_agent
from rsd_rerank.decoding import Decoded, decode, traced
from rsd_rerank.proposers import PROPOSERS, GSDProposer, Proposer
from rsd_rerank.session import TargetSession

__all__ = ["BUDGETED", "METHODS", "DecodingConfig", "proposer_for", "rank"]

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


def proposer_for(config: DecodingConfig, session: TargetSession) -> Proposer:
    """The proposer of a loop method (``std`` never calls its proposer: budget 0)."""
    if config.method == "rsd":
        return AgentProposer(resolve_agent(config.agent, session.target, session.k))
    if config.method == "std":
        return GSDProposer()
    if config.method not in PROPOSERS:
        raise ValueError(f"method {config.method!r} is not a proposer of the decoding loop")
    return PROPOSERS[config.method]()


def rank(session: TargetSession, config: DecodingConfig = DecodingConfig()) -> Decoded:
    """Rank the session's candidates with ``config.method`` under ``config.budget``."""
    if config.method == "greedy":
        start, passes = session.clock(), session.passes
        ranking = session.greedy_ranking()
        return Decoded(torch.tensor([ranking]), traced(session, start, passes))
    budget = 0 if config.method == "std" else config.budget
    return decode(session, proposer_for(config, session), budget)
