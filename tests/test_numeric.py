"""RankZephyr's numeric identifiers ([1] … [K], several tokens each): layout, rows against a brute-force
reference, and exactness of every method at T ≥ K."""

import pytest
import torch

from rsd_rerank.methods import DecodingConfig, rank, rank_many
from rsd_rerank.prompt import NUMERIC_TEMPLATE, PromptConfig, build_prompt, ranking_layout, ranking_text
from rsd_rerank.session import TargetSession

NUMERIC = PromptConfig(template=NUMERIC_TEMPLATE, max_passage_words=20)


def test_numeric_layout_keeps_the_bracket_in_each_piece(smollm2):
    tok = smollm2.tokenizer
    layout = ranking_layout(tok, 20, numeric=True)
    assert not layout.single_token
    assert tok.convert_ids_to_tokens(list(layout.later_pieces[0])) == ["1", "]"]
    assert tok.convert_ids_to_tokens(list(layout.later_pieces[11])) == ["1", "2", "]"]
    assert tok.convert_ids_to_tokens(list(layout.sep)) == ["Ġ>", "Ġ["]
    ranking = [11, 0, 19, 7] + [i for i in range(20) if i not in (11, 0, 19, 7)]
    assert layout.tokens(ranking) == tok.encode(ranking_text(ranking, numeric=True), add_special_tokens=False)
    assert ranking_text([11, 0], numeric=True) == "[12] > [1]"
    # Every K shares the separator, so windows of 5 and of 20 batch in one session.
    assert ranking_layout(tok, 5, numeric=True).sep == layout.sep
    assert ranking_layout(tok, 100, numeric=True).later_pieces[99] == tuple(tok.encode("100]"))


def test_numeric_template_renders_numbers(smollm2, query_docs):
    query, docs = query_docs[0]
    prompt = build_prompt(smollm2.tokenizer, query, docs, NUMERIC)
    text = smollm2.tokenizer.decode(prompt.token_ids)
    assert "[12] " in text and "[L]" not in text and prompt.layout.numeric


def _reference_rows(target, prompt, ranking):
    """Row j by brute force: for each item, the summed log-probabilities of its piece's tokens after the
    prompt and the chunks of slots < j, each from a plain causal forward of the whole sequence."""
    layout = prompt.layout
    k = layout.k
    model = target.model
    rows = []
    prefix = list(prompt.token_ids)
    for slot in range(k):
        scores = []
        for item in range(k):
            piece = list(layout.piece(slot, item))
            ids = torch.tensor([prefix + piece])
            with torch.no_grad():
                log_p = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            start = len(prefix) - 1
            scores.append(sum(log_p[start + t, tok].item() for t, tok in enumerate(piece)))
        rows.append(torch.log_softmax(torch.tensor(scores), dim=0))
        prefix += list(layout.piece(slot, ranking[slot])) + list(layout.sep)
    return torch.stack(rows)


def test_verification_rows_equal_the_brute_force_item_probabilities(tiny_llama, query_docs):
    query, docs = query_docs[0]
    prompt = build_prompt(tiny_llama.tokenizer, query, docs[:12], NUMERIC)
    session = TargetSession.from_prompt(tiny_llama, prompt)
    ranking = [10, 3, 11, 0, 9, 1, 2, 4, 5, 6, 7, 8]
    expected = _reference_rows(tiny_llama, prompt, ranking)
    verified = session.verify(ranking).matrices[0]
    torch.testing.assert_close(verified, expected, atol=2e-4, rtol=0)
    # A second ranking sharing 3 slots reuses their KV and rows, and is still exact.
    other = ranking[:3] + list(reversed(ranking[3:]))
    torch.testing.assert_close(
        session.verify(other).matrices[0], _reference_rows(tiny_llama, prompt, other), atol=2e-4, rtol=0
    )
    assert session.fed_tokens[-1] < session.fed_tokens[0]


@pytest.mark.parametrize("k", [2, 9, 10, 11, 20, 26])
def test_every_method_reproduces_the_greedy_ranking_at_t_ge_k(tiny_llama, query_docs, k):
    query, docs = query_docs[k % 2]
    docs = (docs + query_docs[1 - k % 2][1])[:k]
    session = TargetSession.from_prompt(tiny_llama, build_prompt(tiny_llama.tokenizer, query, docs, NUMERIC))
    greedy = session.greedy_ranking()
    assert sorted(greedy) == list(range(k))
    for method in ("gsd", "consensus", "rsd"):
        session.forget()
        decoded = rank(session, DecodingConfig(method, k, None))
        assert decoded.ranking == greedy, method
        assert decoded.trace.passes <= k
        # Theorem 1: the verified prefix grows every round.
        accepted = decoded.trace.accepted_of()
        assert all(b > a for a, b in zip(accepted, accepted[1:], strict=False))


def test_smollm2_numeric_exactness_and_batched_windows_of_different_k(smollm2, query_docs):
    query, docs = query_docs[0]
    prompts = [build_prompt(smollm2.tokenizer, query, docs[:k], NUMERIC) for k in (20, 7)]
    batched = TargetSession.from_prompts(smollm2, prompts)
    alone = [TargetSession.from_prompt(smollm2, p) for p in prompts]
    greedy = batched.greedy_rankings()
    assert greedy == {0: alone[0].greedy_ranking(), 1: alone[1].greedy_ranking()}
    decoded = rank_many(batched, DecodingConfig("gsd", 20, None))
    assert [decoded[q].ranking for q in (0, 1)] == [greedy[0], greedy[1]]


def test_100_candidates_in_numeric_windows_equal_the_greedy_windows(tiny_llama, requests_json):
    from rank_llm.data import Candidate, Query, Request

    from rsd_rerank.integrations.rank_llm import RSDReranker

    docs = [c["doc"] for r in requests_json for c in r["candidates"]]
    request = Request(
        query=Query(text=requests_json[0]["query"]["text"], qid="q"),
        candidates=[
            Candidate(docid=f"d{i}", score=1.0, doc={"text": f"{docs[i % 40]['text']} ({i})"}) for i in range(100)
        ],
    )
    reranker = RSDReranker(tiny_llama, prompt_template_path=NUMERIC_TEMPLATE, method="gsd", budget=20, batch_size=4)
    (result,) = reranker.rerank_batch([request], rank_end=100, populate_invocations_history=True)
    # RankLLM's windows by hand, bottom up, each ordered by the target's greedy ranking.
    candidates, end = list(request.candidates), 100
    while True:
        start = max(end - 20, 0)
        chunk = candidates[start:end]
        session = TargetSession(tiny_llama, request.query.text, [c.doc for c in chunk], PromptConfig(NUMERIC_TEMPLATE))
        candidates[start:end] = [chunk[i] for i in session.greedy_ranking()]
        if start == 0:
            break
        end -= 10
    assert [c.docid for c in result.candidates] == [c.docid for c in candidates]
    responses = [inv.response for inv in result.invocations_history]
    assert len(responses) == 9 and all(r.startswith("[") and "[20]" in r for r in responses)
