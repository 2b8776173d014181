"""How much room a target leaves a speculative ranking decoder: the difficulty figures of ``shared/targets.md``.

A target is easy when its greedy ranking is the identifier order, or its first-slot order (STD), or
when one Jacobi step (PDM) or GSD already reaches it; it is paper-like when its next item depends
on what it has already written. ``prefix_dependence`` measures the last: swap two early items of the
teacher-forced greedy ranking and count, at every later slot (the same items placed, in another
order), how often the greedy item among the unplaced changes. A model whose rows ignore the order of
the prefix scores 0.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np

from rsd_rerank.decoding import Decoded
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.prompt import PromptConfig, request_prompts
from rsd_rerank.registry import REGISTRY
from rsd_rerank.session import TargetSession

__all__ = [
    "FIDELITY_METHODS",
    "SWAPS",
    "claim_difficulty",
    "content_figures",
    "decoding_run",
    "greedy_ranker",
    "letter_kt",
    "method_run",
    "prefix_dependence",
    "shuffle_order",
]

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


FIDELITY_METHODS: tuple[str, ...] = ("gsd", "pdm", "consensus")
"""The loop methods that need nothing trained: every target's difficulty figures include them."""


def decoding_run(session: TargetSession, decoder: Callable[[TargetSession], Decoded]) -> dict:
    """One decoding run from the prompt (the verified rankings of earlier runs forgotten, so it pays its
    own passes): its ranking, passes, tokens fed over those passes (every sequence of a pass: a pass
    that verifies three drafts side by side feeds three rankings' tokens), and decode seconds."""
    session.forget()
    fed = len(session.fed_tokens)
    decoded = decoder(session)
    return {
        "ranking": decoded.ranking,
        "passes": decoded.trace.passes,
        "tokens": session.tokens_fed(fed),
        "seconds": decoded.trace.decode_seconds,
    }


def method_run(session: TargetSession, config: DecodingConfig, query: int = 0) -> dict:
    """``decoding_run`` of ``config`` on one query."""
    return decoding_run(session, lambda s: rank(s, config, query))


def claim_difficulty(
    session: TargetSession,
    query: int = 0,
    budgets: Sequence[int] = (5,),
    methods: Sequence[str] = FIDELITY_METHODS,
    agent: str | None = None,
) -> dict:
    """One query's figures: the greedy ranking and its KT to identifier order and to STD; KT to it of
    each of ``methods`` at each budget (``agent``: the companion of the methods that take an agent,
    None for the one they pick); the prefix-dependence counts; and under ``runs`` each run's passes, tokens and
    seconds (``greedy``: the target's own K - 1 decode steps)."""
    runs = {"greedy": method_run(session, DecodingConfig("greedy"), query)}
    greedy = runs["greedy"]["ranking"]
    runs["std"] = method_run(session, DecodingConfig("std"), query)
    for t in budgets:
        for m in methods:
            companion = agent if REGISTRY[m].companion == "agent" else None  # gsd, consensus, pdm take none
            runs[f"{m}@{t}"] = method_run(session, DecodingConfig(m, t, agent=companion), query)
    k = len(greedy)
    record = {
        "k": k,
        "greedy": greedy,
        "kt_identifier": _kt(list(range(k)), greedy),
        "kt_std": _kt(runs["std"]["ranking"], greedy),
        **{name: _kt(run["ranking"], greedy) for name, run in runs.items() if "@" in name},
        "prefill_seconds": session.prefill_seconds,
        "runs": {name: {key: v for key, v in run.items() if key != "ranking"} for name, run in runs.items()},
    }
    session.forget()
    record["prefix_changed"], record["prefix_compared"] = prefix_dependence(session, greedy, query)
    return record


def shuffle_order(k: int, seed: int, qid: str) -> list[int]:
    """A seeded random order of a request's K candidates (a function of seed and qid only)."""
    order = list(range(k))
    random.Random(f"content:{seed}:{qid}").shuffle(order)
    return order


def letter_kt(rankings: Sequence[Sequence[int]]) -> float:
    """Mean KT between different claims' rankings *as identifiers* (positions in each one's own list),
    over every pair of equal length: about 0 for a model that ranks by content on shuffled lists,
    near 1 for one that writes the same letters in the same order whatever the passages."""
    pairs = [(a, b) for a, b in combinations(rankings, 2) if len(a) == len(b)]
    return float(np.mean([_kt(a, b) for a, b in pairs])) if pairs else float("nan")


def greedy_ranker(target, config: PromptConfig, batch: int = 8) -> Callable[[Sequence], list[list[int]]]:
    """The target's greedy ranking of each request (indices into its candidates), ``batch`` prompts a session."""

    def rank_requests(requests: Sequence) -> list[list[int]]:
        prompts = request_prompts(target.tokenizer, requests, config, target.max_positions)
        out: list[list[int]] = []
        for start in range(0, len(prompts), batch):
            found = TargetSession.from_prompts(target, prompts[start : start + batch]).greedy_rankings()
            out += [found[q] for q in range(len(found))]
        return out

    return rank_requests


def content_figures(
    rank_requests: Callable[[Sequence], list[list[int]]], requests: Sequence, seeds: tuple[int, int] = (1, 2)
) -> dict:
    """Whether a ranker (``greedy_ranker`` for a target) reads its passages: per request its ranking as
    given and under two seeded shuffles of its candidates, all as indices into the given order.

    Returns ``greedy`` (as given), ``shuffled`` (the first shuffle's ranking as identifiers),
    ``shuffle_kt`` (per request, KT between the two shuffles' rankings as documents: 1 for a model
    that ranks by content, about 0 for a letter habit), and ``letter_kt`` (``letter_kt`` of the
    first shuffle's rankings as identifiers).
    """
    orders = [
        [list(range(len(r.candidates))), *(shuffle_order(len(r.candidates), s, str(r.query.qid)) for s in seeds)]
        for r in requests
    ]
    variants = [
        dataclasses.replace(r, candidates=[r.candidates[i] for i in order])
        for r, os in zip(requests, orders, strict=True)
        for order in os
    ]
    ranked = rank_requests(variants)
    given, letters, shuffle_kts = [], [], []
    for j, os in enumerate(orders):
        rankings = ranked[3 * j : 3 * j + 3]
        docs = [[order[i] for i in ranking] for order, ranking in zip(os, rankings, strict=True)]
        given.append(docs[0])
        letters.append(rankings[1])
        shuffle_kts.append(_kt(docs[1], docs[2]))
    return {"greedy": given, "shuffled": letters, "shuffle_kt": shuffle_kts, "letter_kt": letter_kt(letters)}
