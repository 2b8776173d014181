"""Proposers: what orders the unverified tail after each verification pass, and the seam the agent plugs into.

A proposer sees a ``Round`` (every ranking verified so far, its verification matrix and its i*)
and returns one score per item; the loop (``rsd_rerank.decoding``) places the unfixed items by
descending score. It never calls the LLM and never counts passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "PROPOSERS",
    "ConsensusProposer",
    "DrafterProposer",
    "GSDProposer",
    "JacobiProposer",
    "Proposer",
    "Round",
    "consensus_scores",
    "jacobi_scores",
    "jacobi_slots",
    "rejected_row",
]


@dataclass(frozen=True)
class Round:
    """What a proposer sees after pass t, for B trajectories (of one query, or of many in training)."""

    rankings: torch.Tensor
    """[B, t, K] the rankings verified in passes 1..t."""
    matrices: torch.Tensor
    """[B, t, K, K] their verification matrices (rows = slots, columns = items; row 0 is the first slot)."""
    accepted: torch.Tensor
    """[B, t] i* of every pass: its verified prefix length; slot i* of the latest pass takes the bonus item."""

    @property
    def latest_accepted(self) -> torch.Tensor:
        """[B] i* of the latest pass."""
        return self.accepted[:, -1]

    def select(self, rows: torch.Tensor) -> Round:
        """The same round for a subset of trajectories (a training mini-batch)."""
        return Round(self.rankings[rows], self.matrices[rows], self.accepted[rows])

    def to(self, device: torch.device | str) -> Round:
        """The same round on ``device``."""
        return Round(self.rankings.to(device), self.matrices.to(device), self.accepted.to(device))


class Proposer(Protocol):
    """Orders the unverified tail: returns [B, K] item scores, higher placed earlier.

    Scores of items already fixed (verified prefix and bonus) are ignored by the loop.
    """

    def scores(self, state: Round) -> torch.Tensor: ...


def rejected_row(state: Round) -> torch.Tensor:
    """[B, K] the latest matrix's row at slot i*, whose argmax (among unplaced items) is the bonus."""
    k = state.matrices.shape[-1]
    slot = state.latest_accepted.clamp(max=k - 1)
    latest = state.matrices[:, -1]  # [B, K, K]
    return latest[torch.arange(latest.shape[0], device=latest.device), slot]


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


def jacobi_slots(state: Round) -> torch.Tensor:
    """[B, K] the slot each item takes in one Jacobi (fixed-point) step of the latest pass: the verified
    prefix keeps its slots; from slot i* on (i* takes the bonus, as in Eq. 1), slot i takes the greedy
    item of row i (the target given the teacher-forced σ[:i]) among those not yet placed, slot by slot."""
    sigma, latest, i_star = state.rankings[:, -1], state.matrices[:, -1], state.latest_accepted
    b, k = sigma.shape
    rows = torch.arange(b, device=sigma.device)
    slots = torch.argsort(sigma, dim=1)  # [B, K] each item's slot in σ
    placed = slots < i_star[:, None]
    for slot in range(k):
        filling = slot >= i_star  # [B] trajectories whose slot ``slot`` is after the verified prefix
        if not bool(filling.any()):
            continue
        item = latest[:, slot].masked_fill(placed, float("-inf")).argmax(dim=-1)  # [B]
        slots[rows[filling], item[filling]] = slot
        placed[rows[filling], item[filling]] = True
    return slots


def jacobi_scores(state: Round) -> torch.Tensor:
    """[B, K] scores that sort the items into their ``jacobi_slots`` after the verified prefix (PDM's
    proposal; the verified items score 0, the loop keeps them where they are)."""
    slots = jacobi_slots(state)
    k = slots.shape[1]
    return torch.where(slots >= state.latest_accepted[:, None], k - slots, 0).float()


class JacobiProposer:
    """PDM (Jacobi / fixed-point decoding): every slot after the verified prefix takes the target's
    greedy choice given the teacher-forced prefix of the latest ranking (``jacobi_scores``); the
    current ranking is what a spent budget returns."""

    def scores(self, state: Round) -> torch.Tensor:
        return jacobi_scores(state)


class DrafterProposer:
    """SDM (Leviathan-style speculative decoding): between passes the drafter's order ranks the rest;
    once the budget is spent the target's row at the last rejected slot does (GSD's rule), as the
    paper adapts SD to rank the items it did not accept.

    Args:
        drafter: [K] the drafter's item scores (its first-slot log-probabilities: single-token decoding).
        budget: T, to know the last pass.
    """

    def __init__(self, drafter: torch.Tensor, budget: int):
        self.drafter, self.budget = drafter, budget

    def scores(self, state: Round) -> torch.Tensor:
        if state.rankings.shape[1] >= self.budget:
            return rejected_row(state)
        return self.drafter.to(state.matrices.device).expand(state.matrices.shape[0], -1)


PROPOSERS: dict[str, type] = {"gsd": GSDProposer, "consensus": ConsensusProposer, "pdm": JacobiProposer}
"""The proposers that need nothing but the target, by method name (``rsd``'s agent proposer lives in ``rsd_rerank.agent``)."""
