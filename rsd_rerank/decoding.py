"""Up-to-down decoding under a budget of T LLM passes (the paper's Eq. 1).

    σ_0       = items sorted by the first-slot distribution (STD)
    for t = 1..T:
        S_t, i*_t = verify(σ_{t-1})                    # one LLM pass
        σ_t[:i*]  = σ_{t-1}[:i*]                         # verified prefix kept
        σ_t[i*]   = greedy choice at slot i* under S_t    # bonus item, free from the same pass
        σ_t[i*+1:] = proposer's order of the rest          # GSD, consensus, or the RSD agent

The loop is the only code that counts passes. It runs B trajectories side by side (one batched
verification per round) so that training can roll out G samples of one query at the cost of one
forward a round; ranking one query is B = 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rsd_rerank.session import TargetSession, Verification

__all__ = [
    "BUDGETED",
    "METHODS",
    "Decoded",
    "DecodingConfig",
    "Proposer",
    "Round",
    "Step",
    "Trace",
    "consensus_scores",
    "decode",
    "initial_ranking",
    "next_ranking",
    "rank",
    "rejected_row",
]

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
    """T: LLM verification passes after the prompt (ignored by ``greedy`` and ``std``)."""
    agent: str | None = None
    """``rsd`` only: an agent checkpoint directory or a bundled agent's name; None picks the bundled
    agent trained on the target (``rsd_rerank.agent.resolve_agent``)."""

    @property
    def run_tag(self) -> str:
        """The TREC run tag: ``rsd-rerank.<method>`` with T appended for budgeted methods (``rsd-rerank.gsd5``)."""
        return f"rsd-rerank.{self.method}{self.budget if self.method in BUDGETED else ''}"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.budget < 0:
            raise ValueError(f"the budget must be >= 0 passes, got {self.budget}")


@dataclass(frozen=True)
class Round:
    """What a proposer sees after pass t, for B trajectories of one query."""

    first_slot: torch.Tensor
    """[K] first-slot log-distribution (row 0 of every matrix); [B, K] in training batches whose rows
    come from different queries."""
    rankings: torch.Tensor
    """[B, t, K] the rankings verified in passes 1..t."""
    matrices: torch.Tensor
    """[B, t, K, K] their verification matrices (rows = slots, columns = items)."""
    accepted: torch.Tensor
    """[B] i* of pass t: slot i* is where the bonus item goes."""


class Proposer(Protocol):
    """Orders the unverified tail: returns [B, K] item scores, higher placed earlier.

    Scores of items already fixed (verified prefix and bonus) are ignored by the loop.
    """

    def scores(self, state: Round) -> torch.Tensor: ...


def rejected_row(state: Round) -> torch.Tensor:
    """[B, K] the latest matrix's row at slot i*, whose argmax (among unplaced items) is the bonus."""
    k = state.matrices.shape[-1]
    slot = state.accepted.clamp(max=k - 1)
    latest = state.matrices[:, -1]  # [B, K, K]
    return latest[torch.arange(latest.shape[0]), slot]


def consensus_scores(state: Round) -> torch.Tensor:
    """[B, K] mean log-probability over every row of every matrix so far (the first-slot row included,
    once per matrix) plus the rejected slot's row."""
    b, t, k, _ = state.matrices.shape
    return state.matrices.reshape(b, t * k, k).mean(dim=1) + rejected_row(state)


class GSDProposer:
    """Greedy speculative decoding: the rest ordered by the LLM's distribution at the rejected slot."""

    def scores(self, state: Round) -> torch.Tensor:
        return rejected_row(state)


class ConsensusProposer:
    """No-learning baseline of ``shared/targets.md`` (``consensus_scores``)."""

    def scores(self, state: Round) -> torch.Tensor:
        return consensus_scores(state)


PROPOSERS: dict[str, type] = {"gsd": GSDProposer, "consensus": ConsensusProposer}


@dataclass
class Trace:
    """What a decoding run did: i* per round, LLM passes, seconds."""

    accepted: list[list[int]] = field(default_factory=list)
    """i* of each round, one list per round with an entry per trajectory."""
    passes: int = 0
    """Forward passes after the prompt: verifications (batched over trajectories), or decode steps for ``greedy``."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def accepted_of(self, trajectory: int = 0) -> list[int]:
        """i* of each round for one trajectory (the only one when ranking a single query)."""
        return [round_[trajectory] for round_ in self.accepted]


@dataclass(frozen=True)
class Step:
    """One proposer call: the state it saw and the rankings σ_t [B, K] that came out of Eq. 1."""

    state: Round
    rankings: torch.Tensor


@dataclass(frozen=True)
class Decoded:
    """Final rankings [B, K] (item indices), the trace that produced them, and every proposer step
    (what RPO needs to score a trajectory's choices)."""

    rankings: torch.Tensor
    trace: Trace
    steps: tuple[Step, ...] = ()

    def at(self, passes: int) -> torch.Tensor:
        """[B, K] the rankings after ``passes`` verification passes: what ``decode`` with that budget
        returns (the loop is deterministic given its proposer's scores, so one run at T serves every t ≤ T)."""
        n = len(self.steps)
        if passes == 0:
            return self.steps[0].state.rankings[:, 0] if n else self.rankings
        return self.steps[passes - 1].rankings if passes <= n else self.rankings

    @property
    def ranking(self) -> list[int]:
        """The first (for B = 1, the only) trajectory's ranking."""
        return self.rankings[0].tolist()


def initial_ranking(first_slot: torch.Tensor) -> torch.Tensor:
    """[K] σ_0: items by descending first-slot probability (STD); ties by item index."""
    return torch.argsort(-first_slot, stable=True)


def next_ranking(sigma: torch.Tensor, verification: Verification, scores: torch.Tensor) -> torch.Tensor:
    """[B, K] σ_t from σ_{t-1} (Eq. 1): verified prefix, bonus at slot i*, then the rest by ``scores``."""
    b, k = sigma.shape
    i_star = verification.accepted  # [B]
    done = i_star >= k
    slot_of = torch.argsort(sigma, dim=1)  # [B, K] current slot of each item
    bonus = verification.greedy.gather(1, i_star.clamp(max=k - 1)[:, None])  # [B, 1]
    is_bonus = torch.zeros_like(sigma, dtype=torch.bool).scatter_(1, bonus, True) & ~done[:, None]
    fixed = (slot_of < i_star[:, None]) | is_bonus
    fixed_slot = torch.where(is_bonus, i_star[:, None].expand(b, k), slot_of)
    # Fixed items first (any order among themselves), then the rest by descending score.
    order = torch.argsort(-scores.masked_fill(fixed, float("inf")), dim=1, stable=True)
    rest_slot = torch.argsort(order, dim=1)
    new_slot = torch.where(fixed, fixed_slot, rest_slot)
    return torch.argsort(new_slot, dim=1)


def decode(session: TargetSession, proposer: Proposer, budget: int, trajectories: int = 1) -> Decoded:
    """Up-to-down decoding with at most ``budget`` verification passes; stops early once all verify."""
    start = time.perf_counter()
    first = session.first_slot()
    sigma = initial_ranking(first).expand(trajectories, -1).clone()
    trace = Trace(prefill_seconds=session.prefill_seconds)
    rankings, matrices, steps = [], [], []
    for _ in range(budget):
        v = session.verify(sigma)
        trace.passes += 1
        trace.accepted.append(v.accepted.tolist())
        if bool((v.accepted >= session.k).all()):
            break
        rankings.append(sigma)
        matrices.append(v.matrices)
        state = Round(first, torch.stack(rankings, 1), torch.stack(matrices, 1), v.accepted)
        sigma = next_ranking(sigma, v, proposer.scores(state))
        steps.append(Step(state, sigma))
    trace.decode_seconds = time.perf_counter() - start
    return Decoded(sigma, trace, tuple(steps))


def _greedy(session: TargetSession) -> Decoded:
    start = time.perf_counter()
    ranking = session.greedy_ranking()
    trace = Trace(passes=session.k - 1, prefill_seconds=session.prefill_seconds)
    trace.decode_seconds = time.perf_counter() - start
    return Decoded(torch.tensor([ranking]), trace)


def rank(session: TargetSession, config: DecodingConfig = DecodingConfig()) -> Decoded:
    """Rank the session's candidates with ``config.method`` under ``config.budget``."""
    if config.method == "greedy":
        return _greedy(session)
    if config.method == "std":
        return decode(session, GSDProposer(), budget=0)
    if config.method == "rsd":
        # The agent module builds on this one (it reads Round); imported here to keep that direction.
        from rsd_rerank.agent import AgentProposer, resolve_agent

        return decode(session, AgentProposer(resolve_agent(config.agent, session.target, session.k)), config.budget)
    return decode(session, PROPOSERS[config.method](), config.budget)
