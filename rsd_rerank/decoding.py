"""Up-to-down decoding under a budget of T LLM passes (the paper's Eq. 1).

    σ_0       = items sorted by the first-slot distribution (STD)
    for t = 1..T:
        S_t, i*_t = verify(σ_{t-1})                    # one LLM pass
        σ_t[:i*]  = σ_{t-1}[:i*]                         # verified prefix kept
        σ_t[i*]   = greedy choice at slot i* under S_t    # bonus item, free from the same pass
        σ_t[i*+1:] = proposer's order of the rest          # GSD, consensus, or the RSD agent

The loop knows no method names: it gets a ``Proposer`` (``rsd_rerank.proposers``) and a budget;
``rsd_rerank.methods`` maps a method to a proposer. It runs B trajectories side by side (one
batched verification per round) so that training can roll out G samples of one query at the cost of
one forward a round; ranking one query is B = 1. Passes and seconds come from the session, which
counts and times every forward it makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rsd_rerank.proposers import Proposer, Round
from rsd_rerank.session import TargetSession, Verification

__all__ = ["Decoded", "Step", "Trace", "decode", "initial_ranking", "next_ranking", "traced"]


@dataclass
class Trace:
    """What a decoding run did: i* per round, LLM passes, seconds."""

    accepted: list[list[int]] = field(default_factory=list)
    """i* of each round, one list per round with an entry per trajectory."""
    passes: int = 0
    """Forwards after the prompt, as the session counted them: verifications (batched over
    trajectories), or decode steps for ``greedy`` (0 where its ranking was already memoised)."""
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
    """[B, K] σ_t from σ_{t-1} (Eq. 1): verified prefix, bonus at slot i*, then the rest by ``scores``
    (ties by item index)."""
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
    start, passes_before = session.clock(), session.passes
    sigma = initial_ranking(session.first_slot()).expand(trajectories, -1).clone()
    accepted_rounds: list[list[int]] = []
    rankings, matrices, accepted, steps = [], [], [], []
    for _ in range(budget):
        v = session.verify(sigma)
        accepted_rounds.append(v.accepted.tolist())
        if bool((v.accepted >= session.k).all()):
            break
        rankings.append(sigma)
        matrices.append(v.matrices)
        accepted.append(v.accepted)
        state = Round(torch.stack(rankings, 1), torch.stack(matrices, 1), torch.stack(accepted, 1))
        sigma = next_ranking(sigma, v, proposer.scores(state))
        steps.append(Step(state, sigma))
    trace = traced(session, start, passes_before)
    trace.accepted = accepted_rounds
    return Decoded(sigma, trace, tuple(steps))


def traced(session: TargetSession, start: float, passes_before: int) -> Trace:
    """The trace of work done on ``session`` since ``start`` (its clock) and ``passes_before``."""
    return Trace(
        passes=session.passes - passes_before,
        prefill_seconds=session.prefill_seconds,
        decode_seconds=session.clock() - start,
    )
