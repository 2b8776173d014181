"""The session against its own step-by-step reference, on a tiny random Llama and the real SmolLM2."""

import random

import pytest
import torch

from rsd_rerank.decoding import initial_ranking
from rsd_rerank.session import TargetSession

TOL = 1e-4  # fp32: batched vs incremental attention differ only by summation order


@pytest.fixture(scope="module", params=["tiny_llama", "smollm2"])
def session(request, query_docs):
    query, docs = query_docs[0]
    return TargetSession(request.getfixturevalue(request.param), query, docs)


def _shuffled(k, seed):
    r = list(range(k))
    random.Random(seed).shuffle(r)
    return r


def test_greedy_ranking_verifies_in_full(session):
    g = session.greedy_ranking()
    assert sorted(g) == list(range(20))
    v = session.verify(g)
    assert v.accepted.tolist() == [20]
    assert v.greedy[0].tolist() == g


def test_rows_equal_incremental_decoding(session):
    for ranking in (session.greedy_ranking(), _shuffled(20, 1), _shuffled(20, 2)):
        _, reference = session.stepwise_rows(ranking)
        matrix = session.verify(ranking).matrices[0]
        assert matrix.shape == (20, 20)
        assert (matrix - reference).abs().max() <= TOL
        assert torch.allclose(matrix.exp().sum(-1), torch.ones(20), atol=1e-5)


def test_row0_is_the_first_slot_distribution(session):
    assert torch.equal(session.verify(_shuffled(20, 3)).matrices[0, 0], session.first_slot())


def test_tail_only_verification_matches_a_full_pass(session, tiny_llama, query_docs):
    first = _shuffled(20, 4)
    session.verify(first)
    tail_changed = first[:12] + sorted(first[12:])
    cached = session.verify(tail_changed).matrices[0]
    _, reference = session.stepwise_rows(tail_changed)
    assert (cached - reference).abs().max() <= TOL


def test_batched_verification_equals_one_by_one(session):
    rankings = [_shuffled(20, s) for s in range(5, 9)]
    batch = session.verify(rankings)
    for b, ranking in enumerate(rankings):
        single = session.verify(ranking)
        assert (batch.matrices[b] - single.matrices[0]).abs().max() <= TOL
        assert torch.equal(batch.accepted[b], single.accepted[0])


def test_accepted_is_the_longest_greedy_prefix(session):
    g = session.greedy_ranking()
    for cut in (0, 5, 17):
        # swap the item at slot `cut` with a later one: the first `cut` slots still verify
        r = list(g)
        r[cut], r[cut + 2] = r[cut + 2], r[cut]
        v = session.verify(r)
        assert v.accepted.item() == cut
        assert v.greedy[0, cut].item() == g[cut]


def test_random_target_is_not_degenerate(tiny_llama, query_docs):
    # Guards the strength of the exactness tests: the tiny target's ranking is neither identity nor STD.
    query, docs = query_docs[0]
    s = TargetSession(tiny_llama, query, docs)
    g = s.greedy_ranking()
    assert g != list(range(20)) and g != initial_ranking(s.first_slot()).tolist()


def test_rejects_rankings_that_are_not_permutations(session):
    with pytest.raises(ValueError, match="permutation"):
        session.verify([0] * 20)
    with pytest.raises(ValueError, match=r"shape \[B, 20\]"):
        session.verify(list(range(19)))


def test_session_from_rankllm_messages_matches_the_direct_one(tiny_llama, query_docs):
    from rsd_rerank.prompt import prompt_from_messages

    query, docs = query_docs[1]
    direct = TargetSession(tiny_llama, query, docs)
    again = TargetSession.from_prompt(
        tiny_llama, prompt_from_messages(tiny_llama.tokenizer, direct.prompt.messages, 20)
    )
    assert again.prompt.token_ids == direct.prompt.token_ids
    assert again.greedy_ranking() == direct.greedy_ranking()


def test_one_candidate_session(tiny_llama):
    s = TargetSession(tiny_llama, "q", ["only passage"])
    assert s.greedy_ranking() == [0]
    v = s.verify([0])
    assert v.accepted.tolist() == [1] and v.matrices.shape == (1, 1, 1)


def test_a_pass_feeds_only_the_tail_after_the_verified_prefix(tiny_llama, query_docs):
    # Guards the prefix reuse: without it every pass would feed all K-1 identifier + separator groups.
    s = TargetSession(tiny_llama, *query_docs[0])
    step, k = s._step, s.k
    first = _shuffled(k, 11)
    s.verify(first)
    assert s.fed_tokens == [(k - 1) * step] and s.passes == 1
    for keep in (12, 3, 0):
        second = first[:keep] + sorted(first[keep:], reverse=first[keep] < first[-1])
        shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
        assert shared >= keep
        s.verify(second)
        assert s.fed_tokens[-1] == (k - 1 - shared) * step
        s.verify(first)  # back to the first ranking: again only the differing tail
        assert s.fed_tokens[-1] == (k - 1 - shared) * step
    s.verify(first)  # the very ranking the session holds: nothing to feed, no forward
    assert s.passes == 7 and len(s.fed_tokens) == 7
    s.forget()
    s.verify(first)
    assert s.fed_tokens[-1] == (k - 1) * step  # forget() keeps only the prompt's KV


def test_weights_fingerprint_sees_every_weight():
    from rsd_rerank.targets import random_llama, weights_fingerprint

    shape = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1
    )
    a, b, tuned = (random_llama(seed=0, **shape) for _ in range(3))
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model)
    with torch.no_grad():  # a fine-tune of one middle layer only (hashed once per loaded model: before first use)
        tuned.model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3
    assert weights_fingerprint(tuned.model) != weights_fingerprint(a.model)


def test_loading_a_target_leaves_hugging_face_progress_bars_as_they_were():
    from transformers.utils import logging as hf_logging

    from rsd_rerank.targets import load_target

    hf_logging.enable_progress_bar()
    load_target()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    load_target()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


def test_free_generation_goes_through_the_session(tiny_llama, query_docs):
    s = TargetSession(tiny_llama, *query_docs[0])
    generation = s.generate(max_new_tokens=5, min_new_tokens=5)
    assert generation.new_tokens == 5 and generation.seconds > 0 and isinstance(generation.text, str)
    assert s.passes == 0  # generation's steps are not verification passes


def test_batched_generation_through_the_forward_is_hf_greedy_generation(tiny_llama, query_docs):
    """Free generation runs through the session's one forward, batched with left padding; each query's
    text is what transformers' own greedy ``generate`` writes for it alone."""
    docs = [query_docs[0][1], query_docs[1][1][:7]]  # prompts of different lengths: one is left-padded
    s = TargetSession.from_prompts(
        tiny_llama, [TargetSession(tiny_llama, query_docs[i][0], docs[i]).prompt for i in range(2)]
    )
    assert len(set(s.prompt_lengths)) == 2
    ours = s.generate_many(max_new_tokens=12)
    for q, prompt in enumerate(s.prompts):
        ids = torch.tensor([prompt.token_ids[: len(prompt.token_ids) - len(prompt.layout.head)]])
        out = tiny_llama.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=s._pad_id
        )
        theirs = out[0, ids.shape[1] :].tolist()
        eos = tiny_llama.tokenizer.eos_token_id
        theirs = theirs[: theirs.index(eos) + 1] if eos in theirs else theirs
        assert ours[q].text == tiny_llama.tokenizer.decode(theirs, skip_special_tokens=True)
        assert ours[q].new_tokens == len(theirs)


# One forward holding rankings with different verified prefixes, the best of them not row 0: what a
# batched verification (RPO's G trajectories) keeps must be the best one's, rows and KV alike.


def test_after_a_mixed_pass_the_best_rankings_kv_is_kept(tiny_llama, query_docs):
    session = TargetSession(tiny_llama, *query_docs[0])
    g = session.greedy_ranking()
    session.forget()
    wrong = g[1:] + g[:1]  # i* = 0
    v = session.verify([wrong, g])
    assert v.accepted.tolist() == [0, 20]
    after = g[:10] + [g[10:][i] for i in _shuffled(10, 3)]  # shares g's first 10 slots: its tail is fed on the kept KV
    _, reference = session.stepwise_rows(after)
    assert (session.verify(after).matrices[0] - reference).abs().max() <= TOL


def test_rows_of_a_verified_prefix_are_the_held_ones_so_i_star_grows_in_any_precision(
    tiny_llama, query_docs, monkeypatch
):
    """A pass recomputes the rows of every slot it is fed from; where a ranking had already verified
    them, the held rows are used. On this CPU a recomputation is bit-identical, but not in bf16 on a
    GPU (other kernels for other shapes): the pass's rows are perturbed here as such numerics would,
    and the verified prefix must neither change its rows nor shrink (Theorem 1)."""
    session = TargetSession(tiny_llama, *query_docs[0])
    g = session.greedy_ranking()
    session.forget()
    held = session.verify(g).matrices[0]
    from rsd_rerank.session.single import SingleTokenPasses

    rows = SingleTokenPasses.rows
    noise = torch.Generator().manual_seed(0)

    def perturbed(self, logits, *args, **kwargs):
        out = rows(self, logits, *args, **kwargs)
        return out + torch.randn(out.shape, generator=noise).to(out)  # larger than any precision's error

    monkeypatch.setattr(SingleTokenPasses, "rows", perturbed)
    rest = lambda n, seed: [g[n:][i] for i in _shuffled(20 - n, seed)]  # noqa: E731
    # Row 0 shares 12 verified slots, row 1 only 3: the pass is fed from slot 3 for both.
    v = session.verify([g[:12] + rest(12, 1), g[:3] + rest(3, 2)])
    assert torch.equal(v.matrices[0, :13], held[:13])
    assert v.accepted[0] >= 12
