"""Up-to-down decoding under a budget of T LLM passes (the paper's Eq. 1).

    σ_0       = items sorted by the first-slot distribution (STD)
    for t = 1..T:
        S_t, i*_t = verify(σ_{t-1})                    # one LLM pass
        σ_t[:i*]  = σ_{t-1}[:i*]                         # verified prefix kept
        σ_t[i*]   = greedy choice at slot i* under S_t    # bonus item, free from the same pass
        σ_t[i*+1:] = proposer's order of the rest          # GSD, consensus, or the RSD agent

The loop knows no method names: it gets a ``Proposer`` (``rsd_rerank.proposers``) and a budget;
``rsd_rerank.methods`` maps a method to a proposer. It runs B trajectories of a query side by side
(one batched verification per round) so that training can roll out G samples of one query at the
cost of one forward a round; ranking one query is B = 1. ``decode_many`` runs the loops of several
queries of one session in lockstep: each round, every query still decoding sends its rankings and
all of them are verified in one forward; a query that is done (all verified, or its budget spent)
leaves the batch. Passes and seconds come from the session, which counts and times every forward.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from rsd_rerank.proposers import Proposer, Round
from rsd_rerank.session import TargetSession, Verification, greedy_item

__all__ = [
    "Decoded",
    "Step",
    "Trace",
    "decode",
    "decode_drafts_many",
    "decode_many",
    "draft_rounds",
    "draft_tree",
    "heads_order",
    "initial_ranking",
    "next_ranking",
    "row_agreement",
    "run_loops",
    "traced",
    "tree_decode",
]


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


Loop = Generator[torch.Tensor, Verification, tuple[torch.Tensor, list[list[int]], list[Step]]]


def rounds(first_slot: torch.Tensor, k: int, proposer: Proposer, budget: int, trajectories: int) -> Loop:
    """Eq. 1 for one query, as a coroutine: yields σ_{t-1} [B, K] to verify, receives its ``Verification``;
    returns the final σ, i* per round and the proposer's steps. Stops early once every trajectory verifies."""
    sigma = initial_ranking(first_slot).expand(trajectories, -1).clone()
    accepted_rounds: list[list[int]] = []
    rankings, matrices, accepted, steps = [], [], [], []
    for _ in range(budget):
        v = yield sigma
        accepted_rounds.append(v.accepted.tolist())
        if bool((v.accepted >= k).all()):
            break
        rankings.append(sigma)
        matrices.append(v.matrices)
        accepted.append(v.accepted)
        state = Round(torch.stack(rankings, 1), torch.stack(matrices, 1), torch.stack(accepted, 1))
        sigma = next_ranking(sigma, v, proposer.scores(state))
        steps.append(Step(state, sigma))
    return sigma, accepted_rounds, steps


POOLING_AGREEMENT = 0.42
"""Row agreement (``row_agreement``) at or above which the drafter that pools every row seen (the agent)
orders the unverified tail; below it, the drafter that reads only the row of the true prefix (GSD). Where
a target's rows rank the free items alike whatever the prefix, pooling them averages out noise; where they
depend on the prefix, rows under a rejected prefix mislead and only the latest true one is worth reading.
Set on 20 held-out *training* claims of SmolLM2 (GSD's tail the better; low agreement) and
``smollm2-reranker`` (the agent's; higher), ``scripts/drafts_lead_probe.py``."""


def row_agreement(rankings: torch.Tensor, matrices: torch.Tensor) -> tuple[float, int]:
    """Sum and count of Kendall tau-a between two drafts' rows at the same slot, over the items neither has
    placed, at every slot where their prefixes differ and three or more items are free: the pairs of
    ``rankings`` [B, K] of one pass and their ``matrices`` [B, K, K]. High when the target's next-item
    preference does not depend on what it has already written."""
    b, k = rankings.shape
    slot_of = torch.argsort(rankings, dim=1)  # [B, K] each item's slot
    slots = torch.arange(k, device=rankings.device)
    total, count = rankings.new_zeros((), dtype=torch.float), 0
    for b1 in range(b):
        for b2 in range(b1 + 1, b):
            # differs[j]: the prefixes before slot j differ; free[j, i]: item i is placed by neither before j
            differs = torch.cat([torch.zeros(1, dtype=torch.bool, device=rankings.device),
                                 (rankings[b1] != rankings[b2]).cumsum(0)[:-1] > 0])  # fmt: skip
            free = (slot_of[b1][None, :] >= slots[:, None]) & (slot_of[b2][None, :] >= slots[:, None])
            n = free.sum(1)
            used = differs & (n >= 3)
            pairs = free[:, :, None] & free[:, None, :]
            r1, r2 = matrices[b1].float(), matrices[b2].float()
            concord = torch.sign(r1[:, :, None] - r1[:, None, :]) * torch.sign(r2[:, :, None] - r2[:, None, :])
            tau = (concord * pairs).sum((1, 2)) / (n * (n - 1)).clamp(min=1)
            total = total + tau[used].sum()
            count += int(used.sum())
    return float(total), count


def draft_rounds(first_slot: torch.Tensor, k: int, drafters: Sequence[Proposer], budget: int) -> Loop:
    """Eq. 1 with several drafts a pass, as a coroutine for one query: after σ_0, every pass verifies
    the tail as each of ``drafters`` orders it (distinct drafts only) in one batched forward; the draft
    with the longest verified prefix is kept (its bonus with it), and every draft's rows join the
    state the drafters read next, the kept one last (so that the rejected row and the latest matrix
    are its own).

    ``drafters[0]`` pools every row seen (the agent) and ``drafters[1]`` reads the latest true row
    (GSD). Which of them leads follows the target's rows: once two different drafts have been verified,
    the agent leads while their rows agree (mean ``row_agreement`` ≥ ``POOLING_AGREEMENT``) and GSD
    leads otherwise. The lead's draft comes first, so that it is kept on a tie, and it is the ranking
    returned when the budget ends: the tail no pass verified is ordered by the drafter whose reading
    of the rows suits this target. Returns the kept σ [1, K], the kept i* per round and one step per
    round."""
    sigma = initial_ranking(first_slot)[None]
    lead = 0
    agreement, compared = 0.0, 0  # row_agreement summed over the passes so far
    accepted_rounds: list[list[int]] = []
    rankings, matrices, accepted, steps = [], [], [], []
    for _ in range(budget):
        v = yield sigma
        best = int(torch.argmax(v.accepted))  # the first of the longest: the lead's on a tie
        total, count = row_agreement(sigma, v.matrices)
        agreement, compared = agreement + total, compared + count
        if compared and len(drafters) > 1:
            lead = 0 if agreement / compared >= POOLING_AGREEMENT else 1
        accepted_rounds.append([int(v.accepted[best])])
        if int(v.accepted[best]) >= k:
            sigma = sigma[best : best + 1]
            break
        for d in [*(d for d in range(sigma.shape[0]) if d != best), best]:
            rankings.append(sigma[d : d + 1])
            matrices.append(v.matrices[d : d + 1])
            accepted.append(v.accepted[d : d + 1])
        state = Round(torch.stack(rankings, 1), torch.stack(matrices, 1), torch.stack(accepted, 1))
        kept = Verification(
            sigma[best : best + 1], v.matrices[best : best + 1], v.greedy[best : best + 1], v.accepted[best : best + 1]
        )
        order = [lead, *(d for d in range(len(drafters)) if d != lead)]
        drafts = torch.cat([next_ranking(kept.rankings, kept, drafters[d].scores(state)) for d in order])
        keep, seen = [], set()  # drafts that agree are verified once, the lead's first
        for i, row in enumerate(map(tuple, drafts.tolist())):
            if row not in seen:
                seen.add(row)
                keep.append(i)
        sigma = drafts[keep]
        steps.append(Step(state, sigma[:1]))
    return sigma[:1], accepted_rounds, steps


def decode_many(
    session: TargetSession,
    proposers: Mapping[int, Proposer],
    budget: int,
    trajectories: int = 1,
    initial: Mapping[int, torch.Tensor] | None = None,
) -> dict[int, Decoded]:
    """Up-to-down decoding of several queries of ``session`` (query index → its proposer), with at most
    ``budget`` verification passes each, every round's rankings verified in one forward. σ_0 sorts
    the first-slot scores, the target's own (STD) unless ``initial`` gives a query a drafter's [K]."""
    initial = initial or {}
    loops = {
        q: rounds(initial[q] if q in initial else session.first_slot(q), session.ks[q], p, budget, trajectories)
        for q, p in proposers.items()
    }
    return run_loops(session, loops)


def decode_drafts_many(
    session: TargetSession, drafters: Mapping[int, Sequence[Proposer]], budget: int
) -> dict[int, Decoded]:
    """``draft_rounds`` for several queries of ``session``, every round's drafts of every query in one forward."""
    loops = {q: draft_rounds(session.first_slot(q), session.ks[q], d, budget) for q, d in drafters.items()}
    return run_loops(session, loops)


def run_loops(session: TargetSession, loops: dict[int, Loop]) -> dict[int, Decoded]:
    """Drive the queries' loops in lockstep: each round, every pending query's rankings are verified
    in one forward; a query whose loop returns leaves the batch."""
    start, passes_before = session.clock(), list(session.query_passes)
    pending: dict[int, torch.Tensor] = {}
    finished: dict[int, tuple] = {}

    def advance(q: int, sent: Verification | None) -> None:
        try:
            pending[q] = next(loops[q]) if sent is None else loops[q].send(sent)
        except StopIteration as stop:
            finished[q] = stop.value

    for q in loops:
        advance(q, None)
    while pending:
        verifications = session.verify_many(pending)
        pending = {}
        for q, v in verifications.items():
            advance(q, v)
    seconds = session.clock() - start
    out = {}
    for q in loops:
        sigma, accepted_rounds, steps = finished[q]
        trace = Trace(
            accepted=accepted_rounds,
            passes=session.query_passes[q] - passes_before[q],
            prefill_seconds=session.prefill_seconds,
            decode_seconds=seconds,
        )
        out[q] = Decoded(sigma, trace, tuple(steps))
    return out


def decode(session: TargetSession, proposer: Proposer, budget: int, trajectories: int = 1, query: int = 0) -> Decoded:
    """Up-to-down decoding of one query with at most ``budget`` verification passes; stops early once all verify."""
    return decode_many(session, {query: proposer}, budget, trajectories)[query]


def draft_tree(scores: torch.Tensor, placed: list[int], widths: Sequence[int]) -> list[tuple[int, ...]]:
    """The nodes of a draft tree after ``placed``: depth d branches into the ``widths[d]`` best items of
    head d ([J, K] ``scores``) not on its path. Widths [5, 1, 1, …] make Blockwise's five chains (its
    top-5 selection); Medusa's [3, 3, 3] under the bonus is the paper's [1, 3, 3, 3] tree."""
    nodes: list[tuple[int, ...]] = []
    frontier: list[tuple[int, ...]] = [()]
    order = torch.argsort(scores, dim=-1, descending=True, stable=True).tolist()
    for depth, width in enumerate(widths):
        grown = []
        for path in frontier:
            taken = set(placed) | set(path)
            grown += [path + (item,) for item in [i for i in order[depth] if i not in taken][:width]]
        nodes += grown
        frontier = grown
    return nodes


def heads_order(scores: torch.Tensor, placed: list[int]) -> list[int]:
    """The items not in ``placed``, slot by slot: head d's best left for the d-th, the rest by the last head."""
    k = scores.shape[-1]
    order = list(placed)
    for head in scores:
        if len(order) == k:
            break
        order.append(greedy_item(head, order))
    taken = set(order)
    rest = [i for i in torch.argsort(scores[-1], descending=True, stable=True).tolist() if i not in taken]
    return order + rest


def tree_decode(
    session: TargetSession,
    heads: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    widths: Sequence[int],
    budget: int,
    query: int = 0,
) -> Decoded:
    """Decoding with prediction heads (Blockwise and Medusa) under at most ``budget`` passes.

    The bonus (the target's greedy next item) comes free from the prompt and from every pass. After
    it, the heads ([J, K] item log-probabilities from the hidden state where the bonus was read) draft
    a tree (``draft_tree``); one tree-masked pass (``TargetSession.expand``) verifies it, the deepest
    greedy path is kept and the next bonus read after it. When the budget is spent the rest is ranked
    by the heads (``heads_order``). Every kept item is the target's greedy one and every pass adds at
    least the bonus, so T ≥ K-2 gives the target's ranking.
    """
    k = session.ks[query]
    start, before = session.clock(), session.query_passes[query]
    unembedding = session.identifier_unembedding(query)
    row, hidden = session.first_slot(query), session.first_hidden(query)
    fixed = [greedy_item(row, [])]
    accepted_rounds: list[list[int]] = []
    with torch.no_grad():
        for _ in range(budget):
            if len(fixed) >= k - 1:
                break
            paths = draft_tree(heads(hidden, unembedding), fixed, widths[: k - 1 - len(fixed)])
            expansion = session.expand(fixed, paths, query)
            fixed += expansion.accepted
            accepted_rounds.append([len(fixed)])
            if expansion.node < 0:
                row, hidden = expansion.prefix_row, expansion.prefix_hidden
            else:
                row, hidden = expansion.rows[expansion.node], expansion.hidden[expansion.node]
            fixed.append(greedy_item(row, fixed))
        ranking = heads_order(heads(hidden, unembedding), fixed) if len(fixed) < k else fixed
    trace = traced(session, start, before, query)
    trace.accepted = accepted_rounds
    return Decoded(torch.tensor([ranking], device=session.device), trace)


def traced(session: TargetSession, start: float, passes_before: int, query: int = 0) -> Trace:
    """The trace of work done for ``query`` since ``start`` (the session's clock) and ``passes_before``
    (its ``query_passes`` then)."""
    return Trace(
        passes=session.query_passes[query] - passes_before,
        prefill_seconds=session.prefill_seconds,
        decode_seconds=session.clock() - start,
    )
