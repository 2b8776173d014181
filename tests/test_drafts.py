"""Several drafts a pass (``rsd-drafts``, issue #32): each pass verifies the agent's, GSD's and PDM's tails
in one batched forward and keeps the longest verified one; every draft's rows are read next round."""

from __future__ import annotations

import pytest

from rsd_rerank.decoding import decode, decode_drafts_many
from rsd_rerank.methods import DecodingConfig, proposer_for, rank_many
from rsd_rerank.proposers import GSDProposer, JacobiProposer
from rsd_rerank.session import TargetSession


@pytest.fixture(scope="module")
def sessions(tiny_llama, query_docs):
    return [
        TargetSession(tiny_llama, q, docs[:k])
        for (q, docs), k in zip(query_docs * 3, [20, 12, 16, 9, 20, 14], strict=True)
    ]


def _drafters(session):
    return [proposer_for(DecodingConfig("rsd", 2), session), GSDProposer(), JacobiProposer()]


def test_a_multi_draft_round_verifies_no_less_than_any_of_its_drafts_alone(sessions):
    """From the same state (σ_0 verified once), the second pass's kept prefix is the longest of the drafts'
    prefixes, each verified alone: never shorter than any single draft's."""
    longer = 0
    for session in sessions:
        alone = []
        for proposer in _drafters(session):
            session.forget()
            alone.append(decode(session, proposer, budget=2).trace.accepted[1][0])
        session.forget()
        both = decode_drafts_many(session, {0: _drafters(session)}, budget=2)[0]
        assert both.trace.accepted[1][0] == max(alone)
        assert session.passes >= 2 and both.trace.passes == 2  # one forward a round, whatever the drafts
        longer += max(alone) > alone[0]
    assert longer  # on some claim another draft beats the agent's: the choice of the longest matters


def test_rsd_drafts_is_exact_at_t_ge_k_and_batched_as_alone(sessions):
    for session in sessions[:3]:
        session.forget(greedy=True)
        greedy = session.greedy_ranking()
        session.forget()
        assert rank_many(session, DecodingConfig("rsd-drafts", session.ks[0]))[0].ranking == greedy


def test_rsd_drafts_at_a_budget_never_loses_to_its_first_draft_in_passes(sessions):
    """Through ``rank_many``: a pass of several drafts is counted once, and the kept i* per round is the
    longest of that round's drafts."""
    session = sessions[0]
    session.forget()
    decoded = rank_many(session, DecodingConfig("rsd-drafts", 3))[0]
    assert decoded.trace.passes <= 3 and len(decoded.steps) == len(decoded.trace.accepted) - (
        decoded.trace.accepted[-1][0] >= session.ks[0]
    )


def test_drafters_that_agree_are_one_draft_and_the_loop_is_theirs(sessions):
    """Three copies of GSD verify one draft a pass and end where GSD's own loop ends, at every budget."""
    for session in sessions[:3]:
        for budget in (1, 2, 4):
            session.forget()
            alone = decode(session, GSDProposer(), budget)
            session.forget()
            tripled = decode_drafts_many(session, {0: [GSDProposer()] * 3}, budget)[0]
            assert tripled.ranking == alone.ranking and tripled.trace.accepted == alone.trace.accepted
            assert session.fed_sequences[-1] == 1  # one ranking fed, not three


def test_a_pass_of_several_drafts_counts_every_drafts_tokens(sessions):
    """Tokens per pass (what the difficulty report sets beside Blockwise's and Medusa's trees) count every
    draft a pass verifies side by side, not one sequence."""
    several = 0
    for session in sessions:
        session.forget()
        before = len(session.fed_tokens)
        decode_drafts_many(session, {0: _drafters(session)}, budget=2)
        widths, drafts = session.fed_tokens[before:], session.fed_sequences[before:]
        assert drafts[0] == 1  # σ_0 alone, then the distinct drafts of the tail
        assert session.tokens_fed(before) == sum(w * n for w, n in zip(widths, drafts, strict=True))
        several += drafts[-1] > 1 and session.tokens_fed(before) > sum(widths)
    assert several


class _Fixed:
    """A drafter that always orders the free items by the same scores."""

    def __init__(self, scores):
        import torch

        self.fixed = torch.tensor([scores], dtype=torch.float)

    def scores(self, state):
        return self.fixed


def test_the_rows_decide_which_drafter_orders_the_unverified_tail():
    """The tail no pass verified is ordered by the drafter that pools every row (drafters[0], the agent)
    when the target's rows rank the free items alike under different prefixes, and by the drafter of the
    latest true row (drafters[1], GSD) when they do not: SmolLM2's rows depend on the prefix and GSD's tail
    is the better there; a letter habit's do not and the agent's is."""
    import torch

    from rsd_rerank.decoding import draft_rounds, row_agreement
    from rsd_rerank.session import Verification

    k = 10
    base = torch.randn(k)

    def tail_after(sign: float) -> list[int]:
        pooling, latest = _Fixed(list(range(k, 0, -1))), _Fixed(list(range(1, k + 1)))
        loop = draft_rounds(torch.arange(k, 0, -1, dtype=torch.float), k, [pooling, latest], budget=2)
        sigma = loop.send(None)
        rows = base.expand(1, k, k).clone()
        sigma = loop.send(Verification(sigma, rows, sigma.clone(), torch.tensor([1])))
        assert sigma.shape[0] == 2  # the two drafts differ after the bonus
        rows = torch.stack([base.expand(k, k), sign * base.expand(k, k)])  # the second draft's rows: alike or reversed
        total, compared = row_agreement(sigma, rows)  # slots where the prefixes differ and 3+ items are free in both
        assert compared == 2 and total == pytest.approx(sign * compared)  # tau +1 (alike) or -1 (reversed) at each
        with pytest.raises(StopIteration) as done:
            loop.send(Verification(sigma, rows, sigma.clone(), torch.tensor([2, 2])))
        final, accepted, _ = done.value.value
        assert accepted == [[1], [2]]
        return final[0, 3:].tolist()

    alike, reversed_ = tail_after(1.0), tail_after(-1.0)
    assert alike == sorted(alike)  # the pooling drafter's order
    assert reversed_ == sorted(reversed_, reverse=True)  # the latest row's drafter's order
