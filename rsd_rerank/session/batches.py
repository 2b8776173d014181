"""Sessions over groups of prompts: how many requests share one prefill and one forward a round."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rsd_rerank.prompt import Prompt
from rsd_rerank.runs import BatchConfig, batches
from rsd_rerank.session.target_session import TargetSession
from rsd_rerank.targets import Target

__all__ = ["batched_sessions"]


def batched_sessions(
    target: Target, prompts: Sequence[Prompt], batching: BatchConfig
) -> Iterator[tuple[list[int], TargetSession]]:
    """One session per group of ``runs.batches`` over ``prompts``, built as the caller reaches it, with the
    indices of its prompts."""
    for group in batches([len(p.token_ids) for p in prompts], batching):
        yield group, TargetSession.from_prompts(target, [prompts[i] for i in group], batching.batch_invariant)
