"""The pure maths of a verification: the greedy choice at every slot, i*, the shared prefix.

No model here: these read the [B, K, K] matrices a pass produced (row i = the next-identifier
log-distribution after ranking[:i], column = item).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Verification",
    "accepted_length",
    "as_rankings",
    "greedy_choices",
    "greedy_item",
    "shared_prefix",
    "verified_rows",
]


@dataclass(frozen=True)
class Verification:
    """The result of one LLM pass over B teacher-forced rankings of one query's K items."""

    rankings: torch.Tensor
    """[B, K] the verified rankings (item indices)."""
    matrices: torch.Tensor
    """[B, K, K] log-probabilities over the K identifiers: row i (slot) = next identifier after ranking[:i], column = item."""
    greedy: torch.Tensor
    """[B, K] the LLM's greedy item at each slot among the items not placed before it."""
    accepted: torch.Tensor
    """[B] i*: length of the longest prefix equal to the greedy choices (K when the whole ranking verifies)."""


def greedy_choices(rankings: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """[B, K] argmax of each row over the items not placed at earlier slots of the same ranking."""
    k = rankings.shape[1]
    position = torch.argsort(rankings, dim=1)  # [B, K] slot of each item
    placed = position[:, None, :] < torch.arange(k, device=rankings.device)[None, :, None]  # [B, slot, item]
    return matrices.masked_fill(placed, float("-inf")).argmax(dim=-1)


def greedy_item(row: torch.Tensor, placed: Sequence[int]) -> int:
    """The best item of a [K] row among those not in ``placed``."""
    if not placed:
        return int(row.argmax())
    return int(row.index_fill(0, torch.tensor(list(placed), device=row.device), float("-inf")).argmax())


def accepted_length(rankings: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """[B] i*: the number of leading slots where the ranking equals the greedy choice."""
    return (rankings == greedy).long().cumprod(dim=1).sum(dim=1)


def shared_prefix(ranking: Sequence[int], held: Sequence[int]) -> int:
    """How many leading items ``ranking`` shares with ``held`` (a query's last verified ranking)."""
    n = 0
    for a, b in zip(held, ranking, strict=False):
        if a != b:
            break
        n += 1
    return n


def as_rankings(rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor, k: int, device) -> torch.Tensor:
    """[B, K] long rankings on ``device`` from one ranking [K] or a batch [B, K].

    Raises:
        ValueError: not of shape [B, K], or a row that is not a permutation of 0..K-1.
    """
    r = torch.as_tensor(rankings, dtype=torch.long, device=device)
    if r.dim() == 1:
        r = r[None]
    if r.dim() != 2 or r.shape[1] != k:
        raise ValueError(f"rankings must have shape [B, {k}], got {tuple(r.shape)}")
    if not torch.equal(r.sort(dim=1).values, torch.arange(k, device=device).expand_as(r)):
        raise ValueError(f"every ranking must be a permutation of 0..{k - 1}")
    return r


def verified_rows(held_rows: torch.Tensor, fresh: torch.Tensor | None, shared: Sequence[int], k: int) -> torch.Tensor:
    """[B, K, K] a pass's matrices: each ranking's rows up to its own shared prefix are the held ones
    (``held_rows`` [n+1, K], slots 0..n of the held ranking: they condition on the same items), the rest
    the pass's ``fresh`` rows [B, K, K] (None: the pass fed nothing, every row is held).

    Why: a pass recomputes every slot it is fed from, and a recomputation may round differently (bf16,
    other kernels for other shapes); taking the held rows keeps the verified prefix and its bonus item
    accepted again in any precision, so i* never shrinks (Theorem 1 by construction)."""
    b = len(shared)
    held = torch.cat([held_rows, held_rows.new_zeros(k - held_rows.shape[0], k)])  # [K, K]
    if fresh is None:
        fresh = held.expand(b, -1, -1)
    slot = torch.arange(k, device=held.device)
    own = slot[None, :] <= torch.tensor(shared, device=held.device)[:, None]  # [B, K]
    return torch.where(own[:, :, None], held.expand(b, -1, -1), fresh)
