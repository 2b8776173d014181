"""How much room a target leaves a speculative ranking decoder: the difficulty figures of ``shared/targets.md``.

A target is easy when its greedy ranking is the identifier order, or its first-slot order (STD), or
when one Jacobi step (PDM) or GSD already reaches it; it is paper-like when its next item depends
on what it has already written. ``prefix_dependence`` measures the last: swap two early items of the
teacher-forced greedy ranking and count, at every later slot (the same items placed, in another
order), how often the greedy item among the unplaced changes. A model whose rows ignore the order of
the prefix scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.session import TargetSession

__all__ = ["SWAPS", "claim_difficulty", "prefix_dependence"]

SWAPS: tuple[tuple[int, int], ...] = ((0, 1), (1, 3), (2, 5))
"""The early slot pairs swapped by ``prefix_dependence`` (those of ``shared/targets.md``)."""


def prefix_dependence(
    session: TargetSession, greedy: Sequence[int], query: int = 0, swaps: Sequence[tuple[int, int]] = SWAPS
) -> tuple[int, int]:
    """(changed, compared): over ``swaps`` (a, b) of ``greedy``, the later slots b+1 … K-2 whose greedy
    item among the unplaced differs from the unswapped ranking's, and how many slots were compared.

    Slot K-1 is left out (one item remains there). Every ranking is verified in one pass.
    """
    k = len(greedy)
    used = [(a, b) for a, b in swaps if b + 1 < k - 1]
    if not used:
        return 0, 0
    rankings = [list(greedy)]
    for a, b in used:
        swapped = list(greedy)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        rankings.append(swapped)
    greedy_items = session.verify(rankings, query).greedy.cpu()  # [1 + S, K]
    changed = compared = 0
    for i, (_, b) in enumerate(used, start=1):
        later = slice(b + 1, k - 1)
        changed += int((greedy_items[0, later] != greedy_items[i, later]).sum())
        compared += k - 1 - (b + 1)
    return changed, compared


def _kt(pred: Sequence[int], target: Sequence[int]) -> float:
    return float(kendall_tau(np.asarray([pred]), np.asarray([target]))[0])


def claim_difficulty(session: TargetSession, query: int = 0, budgets: Sequence[int] = (5,)) -> dict:
    """One query's figures: KT of the greedy ranking to identifier order and to STD, KT to it of GSD,
    PDM and consensus at each budget, and the prefix-dependence counts."""
    greedy = session.greedy_ranking(query)
    k = len(greedy)

    def kt_of(method: str, budget: int = 0) -> float:
        session.forget()  # every method pays its own passes from the prompt
        ranking = rank(session, DecodingConfig(method=method, budget=budget), query).rankings[0].tolist()
        return _kt(ranking, greedy)

    record = {
        "k": k,
        "greedy": greedy,
        "kt_identifier": _kt(list(range(k)), greedy),
        "kt_std": kt_of("std"),
        **{f"{m}@{t}": kt_of(m, t) for t in budgets for m in ("gsd", "pdm", "consensus")},
    }
    session.forget()
    record["prefix_changed"], record["prefix_compared"] = prefix_dependence(session, greedy, query)
    return record
