"""The up-to-down loop (Eq. 1): exactness, Theorem 1, and GSD's guarantees, on real forwards."""

import pytest
import torch

from rsd_rerank.decoding import (
    ConsensusProposer,
    DecodingConfig,
    GSDProposer,
    decode,
    initial_ranking,
    next_ranking,
    rank,
)
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
        assert decoded.trace.passes == len(decoded.trace.accepted) <= budget


def test_std_is_the_first_slot_order_with_no_pass(sessions):
    s = sessions[0]
    decoded = rank(s, DecodingConfig("std"))
    assert decoded.trace.passes == 0
    assert decoded.ranking == initial_ranking(s.first_slot()).tolist()
    assert decoded.ranking == sorted(range(s.k), key=lambda i: -s.first_slot()[i].item())


def test_greedy_method_is_the_target(sessions):
    s = sessions[0]
    decoded = rank(s, DecodingConfig("greedy"))
    assert decoded.ranking == s.greedy_ranking() and decoded.trace.passes == s.k - 1


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
    from rsd_rerank.decoding import Round

    m = torch.arange(2 * 3 * 3, dtype=torch.float).reshape(1, 2, 3, 3)
    state = Round(m[0, 0, 0], torch.zeros(1, 2, 3), m, torch.tensor([1]))
    expected = m.reshape(6, 3).mean(0) + m[0, 1, 1]
    assert torch.equal(ConsensusProposer().scores(state)[0], expected)
    assert torch.equal(GSDProposer().scores(state)[0], m[0, 1, 1])


@pytest.mark.parametrize(("kwargs", "message"), [({"method": "beam"}, "unknown method"), ({"budget": -1}, ">= 0")])
def test_bad_decoding_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)
