"""Batch-invariant verification (``BatchConfig.batch_invariant``): every ranking fed whole and alone, in a
forward of one shape per query (``Passes.whole_pass``), so that a slot's row is a function of the items
before it alone, bit for bit, whatever the rest of the ranking, the batch or the earlier passes. The
greedy target is then the fixed point of these passes, and every method that verifies whole rankings
reaches it at T >= K in any precision (docs/precision.md).
"""

from __future__ import annotations

import torch

from rsd_rerank.session.kv import Held
from rsd_rerank.session.passes import Passes
from rsd_rerank.session.verification import Verification, accepted_length, greedy_choices

__all__ = ["fixed_point", "verify_whole"]


def verify_whole(passes: Passes, held: Held, rs: dict[int, torch.Tensor]) -> dict[int, Verification]:
    """``TargetSession.verify_many`` with batch-invariant passes; the best ranking becomes the query's held one."""
    out = {}
    for q, r in rs.items():
        matrices = passes.whole_pass(q, r)
        greedy = greedy_choices(r, matrices)
        accepted = accepted_length(r, greedy)
        best = int(accepted.argmax())
        held.items[q] = tuple(r[best, : passes.ks[q] - 1].tolist())
        held.rows[q], held.kv[q] = matrices[best], None
        out[q] = Verification(rankings=r, matrices=matrices, greedy=greedy, accepted=accepted)
    return out


def fixed_point(passes: Passes, q: int) -> list[int]:
    """The greedy target under batch-invariant passes: the one ranking that verifies whole, found as GSD
    finds it (at most K-1 passes: each keeps the verified prefix and takes the next slot's choice).

    Raises:
        RuntimeError: no fixed point in K passes, which happens only where the device's kernels give
            different bits for the same forward (non-deterministic kernels).
    """
    k = passes.ks[q]
    ranking = passes.row0_alone(q).argsort(descending=True, stable=True).tolist()
    verified = 0
    for _ in range(k):
        r = torch.tensor([ranking], device=passes.device)
        rows = passes.whole_pass(q, r)
        greedy = greedy_choices(r, rows)[0]
        i = int(accepted_length(r, greedy[None])[0])
        if i >= k - 1:
            return ranking
        if i < verified:
            break
        prefix = ranking[:i] + [int(greedy[i])]
        rest = [j for j in rows[0, i].argsort(descending=True, stable=True).tolist() if j not in prefix]
        ranking, verified = prefix + rest, i + 1
    raise RuntimeError(
        f"batch-invariant passes found no fixed point for query {q}: the same forward gave different rows "
        "(non-deterministic kernels on this device); run without --batch-invariant"
    )
