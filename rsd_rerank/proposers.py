"""Proposers: what orders the unverified tail after each verification pass, and the seam the agent plugs into.

A proposer sees a ``Round`` (every ranking verified so far, its verification matrix and its i*)
and returns one score per item; the loop (``rsd_rerank.decoding``) places the unfixed items by
descending score. It never calls the LLM and never counts passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["PROPOSERS", "ConsensusProposer", "GSDProposer", "Proposer", "Round", "consensus_scores", "rejected_row"]


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


PROPOSERS: dict[str, type] = {"gsd": GSDProposer, "consensus": ConsensusProposer}
"""The non-learned proposers by method name (``rsd``'s agent proposer lives in ``rsd_rerank.agent``)."""
