"""The up-to-down loop (Eq. 1): exactness, Theorem 1, and GSD's guarantees, on real forwards."""

import random

import pytest
import torch

from rsd_rerank.decoding import decode, initial_ranking, next_ranking
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.proposers import ConsensusProposer, GSDProposer, Round
from rsd_rerank.session import TargetSession, Verification

PROPOSERS = [GSDProposer, ConsensusProposer]


@pytest.fixture(scope="module", params=["tiny_llama", "smollm2"])
def sessions(request, query_docs):
    target = request.getfixturevalue(request.param)
    return [TargetSession(target, q, d) for q, d in query_docs]


@pytest.mark.parametrize("proposer", PROPOSERS)
def test_budget_of_k_returns_the_greedy_ranking_exactly(sessions, proposer):
    for s in sessions:
        decoded = decode(s, proposer(), budget=s.k)
        assert decoded.ranking == s.greedy_ranking()


@pytest.mark.parametrize("proposer", PROPOSERS)
def test_verified_prefix_grows_strictly_each_round_theorem_1(sessions, proposer):
    for s in sessions:
        accepted = [a[0] for a in decode(s, proposer(), budget=s.k).trace.accepted]
        assert accepted[-1] == s.k
        assert all(b > a for a, b in zip(accepted, accepted[1:], strict=False))
        assert len(accepted) <= s.k - 1 + 1  # i* >= t-1 after t passes, and K-1 verified means all K


def test_tiny_target_needs_several_rounds(sessions):
    # Otherwise the Theorem-1 test above would be vacuous.
    assert max(decode(s, GSDProposer(), budget=s.k).trace.passes for s in sessions) >= 4


@pytest.mark.parametrize("budget", [1, 2, 3, 5])
def test_gsd_keeps_its_verified_prefix_and_bonus(sessions, budget):
    for s in sessions:
        decoded = decode(s, GSDProposer(), budget)
        last = decoded.trace.accepted[-1][0]
        n = min(last + 1, s.k)  # verified prefix plus the bonus item are the target's
        assert decoded.ranking[:n] == s.greedy_ranking()[:n]
        # A round whose ranking the session already holds (from an earlier run) costs no forward.
        assert decoded.trace.passes <= len(decoded.trace.accepted) <= budget


def test_std_is_the_first_slot_order_with_no_pass(sessions):
    s = sessions[0]
    decoded = rank(s, DecodingConfig("std"))
    assert decoded.trace.passes == 0
    assert decoded.ranking == initial_ranking(s.first_slot()).tolist()
    assert decoded.ranking == sorted(range(s.k), key=lambda i: -s.first_slot()[i].item())


def test_greedy_method_is_the_target_and_counts_what_it_cost(tiny_llama, query_docs):
    s = TargetSession(tiny_llama, *query_docs[0])
    decoded = rank(s, DecodingConfig("greedy"))
    assert decoded.ranking == s.greedy_ranking() and decoded.trace.passes == s.k - 1
    assert s.fed_tokens == [s._step] * (s.k - 1)  # one identifier + separator per decode step
    again = rank(s, DecodingConfig("greedy"))  # memoised: no forward, and the trace says so
    assert again.ranking == decoded.ranking and again.trace.passes == 0


def test_batched_trajectories_agree_with_single(sessions):
    s = sessions[1]
    batch = decode(s, GSDProposer(), budget=3, trajectories=3)
    single = decode(s, GSDProposer(), budget=3)
    assert all(row == single.ranking for row in batch.rankings.tolist())


def test_next_ranking_is_eq_1():
    sigma = torch.tensor([[3, 1, 0, 2, 4], [0, 1, 2, 3, 4]])
    # Row 0: prefix [3, 1] verified, greedy at slot 2 is item 4 (bonus); rest {0, 2} by scores: 2 before 0.
    # Row 1: fully verified, unchanged.
    greedy = torch.tensor([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]])
    v = Verification(sigma, torch.zeros(2, 5, 5), greedy, torch.tensor([2, 5]))
    scores = torch.tensor([[0.1, 9.0, 0.5, 9.0, 9.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert next_ranking(sigma, v, scores).tolist() == [[3, 1, 4, 2, 0], [0, 1, 2, 3, 4]]


def test_consensus_scores_average_every_row_plus_the_rejected_one():
    m = torch.arange(2 * 3 * 3, dtype=torch.float).reshape(1, 2, 3, 3)
    state = Round(torch.zeros(1, 2, 3), m, torch.tensor([[0, 1]]))
    expected = m.reshape(6, 3).mean(0) + m[0, 1, 1]
    assert torch.equal(ConsensusProposer().scores(state)[0], expected)
    assert torch.equal(GSDProposer().scores(state)[0], m[0, 1, 1])


@pytest.mark.parametrize(("kwargs", "message"), [({"method": "beam"}, "unknown method"), ({"budget": -1}, ">= 0")])
def test_bad_decoding_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)


def eq1_reference(sigma: list[int], i_star: int, bonus: int, scores: list[float]) -> list[int]:
    """Eq. 1 row by row: verified prefix, the bonus at slot i*, then the rest by score (ties by item)."""
    if i_star >= len(sigma):
        return list(sigma)
    head = list(sigma[:i_star]) + [bonus]
    return head + sorted(set(sigma) - set(head), key=lambda item: (-scores[item], item))


def test_next_ranking_equals_the_row_by_row_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 7, 20, 26):
        b = 64
        sigma = torch.stack([torch.randperm(k, generator=g) for _ in range(b)])
        i_star = torch.randint(0, k + 1, (b,), generator=g)
        greedy = torch.stack([torch.randperm(k, generator=g) for _ in range(b)])
        for row in range(b):
            i = int(i_star[row])
            if i < k:  # the greedy item at slot i* is unplaced and differs from sigma's (else i* would be larger)
                free = sigma[row, i + 1 :]
                greedy[row, i] = free[torch.randint(0, len(free), (1,), generator=g)] if len(free) else sigma[row, i]
                if not len(free):
                    i_star[row] = k
        scores = torch.randint(0, 4, (b, k), generator=g).float()  # few values: ties are exercised
        v = Verification(sigma, torch.zeros(b, k, k), greedy, i_star)
        out = next_ranking(sigma, v, scores).tolist()
        for row in range(b):
            i = int(i_star[row])
            bonus = int(greedy[row, min(i, k - 1)])
            assert out[row] == eq1_reference(sigma[row].tolist(), i, bonus, scores[row].tolist())


class NegatedRejectedRow:
    """A deliberately bad proposer: the rest in the order the LLM likes least."""

    def scores(self, state):
        return -GSDProposer().scores(state)


def _random_request(rng: random.Random, k: int) -> tuple[str, list[str]]:
    words = "ocean tide vitamin bone protein cell gene light salt storm reef fish virus lung heart brain".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(k)]
    return " ".join(rng.choice(words) for _ in range(4)), docs


def test_theorem_1_for_random_lists_and_every_proposer(tiny_llama):
    from rsd_rerank.agent import AgentProposer, resolve_agent

    rng = random.Random(0)
    for k in (2, 26, *rng.sample(range(3, 26), 6)):
        session = TargetSession(tiny_llama, *_random_request(rng, k))
        greedy = session.greedy_ranking()
        proposers = {
            "negated": NegatedRejectedRow(),
            "gsd": GSDProposer(),
            "consensus": ConsensusProposer(),
            "rsd": AgentProposer(resolve_agent("random-llama", tiny_llama, k)),
        }
        for name, proposer in proposers.items():
            session.forget()
            decoded = decode(session, proposer, budget=k)
            assert decoded.ranking == greedy, (k, name)
            accepted = decoded.trace.accepted_of()
            assert accepted[-1] == k, (k, name)
            assert all(b > a for a, b in zip(accepted, accepted[1:], strict=False)), (k, name, accepted)
            assert decoded.trace.passes == len(accepted) <= k


def test_a_later_round_feeds_only_the_tail_after_its_verified_prefix(tiny_llama, query_docs):
    s = TargetSession(tiny_llama, *query_docs[0])
    decoded = decode(s, GSDProposer(), budget=2)
    i_star = decoded.trace.accepted_of()[0]
    assert 0 < i_star < s.k - 1  # the round is informative
    assert s.fed_tokens[0] == (s.k - 1) * s._step
    assert s.fed_tokens[1] <= (s.k - 1 - i_star) * s._step


def _jacobi_reference(sigma: list[int], rows: torch.Tensor, i_star: int) -> list[int]:
    """Each item's slot in one Jacobi step, row by row: the verified prefix stays; slot i from i* on takes
    row i's best item among those not placed yet."""
    k = len(sigma)
    slots = [0] * k
    for slot, item in enumerate(sigma[:i_star]):
        slots[item] = slot
    placed = set(sigma[:i_star])
    for slot in range(i_star, k):
        item = max((i for i in range(k) if i not in placed), key=lambda i: (float(rows[slot, i]), -i))
        slots[item] = slot
        placed.add(item)
    return slots


def test_jacobi_slots_place_each_item_from_its_own_row_in_place():
    """PDM's step and the agent's Jacobi features: every slot after the verified prefix from its own row
    of the latest pass, in order, among the items not yet placed (against a row-by-row reference)."""
    from rsd_rerank.proposers import jacobi_scores, jacobi_slots

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        b, t, k = 4, 2, int(torch.randint(2, 12, (1,), generator=g))
        rankings = torch.stack([torch.stack([torch.randperm(k, generator=g) for _ in range(t)]) for _ in range(b)])
        matrices = torch.log_softmax(torch.randn(b, t, k, k, generator=g), dim=-1)
        accepted = torch.randint(0, k + 1, (b, t), generator=g)
        state = Round(rankings, matrices, accepted)
        slots = jacobi_slots(state)
        for r in range(b):
            reference = _jacobi_reference(rankings[r, -1].tolist(), matrices[r, -1], int(accepted[r, -1]))
            assert slots[r].tolist() == reference
        # PDM's scores sort the unverified items into those slots
        scores, i_star = jacobi_scores(state), accepted[:, -1]
        for r in range(b):
            tail = [i for i in range(k) if slots[r, i] >= i_star[r]]
            assert sorted(tail, key=lambda i: -float(scores[r, i])) == sorted(tail, key=lambda i: int(slots[r, i]))
