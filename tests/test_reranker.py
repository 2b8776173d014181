"""The realistic target and the difficulty report: prefix dependence is 0 for rows that ignore the order of
the prefix and positive for rows that read it; the reranker's training data is seeded and content-driven;
the shipped ``smollm2-reranker`` loads offline and ranks reproducibly."""

import json

import pytest
import torch

from rsd_rerank.difficulty import SWAPS, claim_difficulty, prefix_dependence
from rsd_rerank.prompt import PromptConfig, request_prompts, shown_passages
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession, Verification, accepted_length, greedy_choices
from rsd_rerank.targets import RERANKER, RERANKER_ADAPTER, load_target
from rsd_rerank.training.reranker import shuffled_requests, similarity_rankings

K = 12


class RowsFrom:
    """A model in code: the row of each slot is ``row(prefix)`` (a [K] score over items), verified in one call."""

    def __init__(self, row):
        self.row = row

    def verify(self, rankings, query=0):
        r = torch.as_tensor(rankings)
        matrices = torch.stack([torch.stack([self.row(tuple(x[:i].tolist())) for i in range(K)]) for x in r])
        greedy = greedy_choices(r, matrices)
        return Verification(r, matrices, greedy, accepted_length(r, greedy))


SCORES = torch.randn(K, generator=torch.Generator().manual_seed(0))


def test_prefix_dependence_is_zero_when_rows_ignore_the_prefix_order():
    # Rows that depend on which items were placed, never on their order: the same set gives the same choice.
    model = RowsFrom(lambda prefix: SCORES + 0.3 * len(prefix) + SCORES.roll(len(set(prefix))))
    changed, compared = prefix_dependence(model, list(range(K)))
    assert compared == sum(K - 2 - b for _, b in SWAPS) and changed == 0


def test_prefix_dependence_is_positive_when_rows_read_the_last_item_written():
    def row(prefix):
        follow = torch.zeros(K)
        if prefix:
            follow[(prefix[-1] + 1) % K] = 10.0  # "after item i comes item i + 1"
        return SCORES + follow

    model = RowsFrom(row)
    changed, compared = prefix_dependence(model, list(range(K)))
    assert 0 < changed <= compared


def test_claim_difficulty_on_a_tiny_target(tiny_llama, query_docs):
    session = TargetSession.from_request(tiny_llama, _request(*query_docs[0]), PromptConfig(max_passage_words=20))
    figures = claim_difficulty(session, 0, budgets=(1, 19))
    assert figures["k"] == 20 and sorted(figures["greedy"]) == list(range(20))
    # At T = K - 1 every loop method is exact (Theorem 1).
    assert figures["gsd@19"] == figures["pdm@19"] == figures["consensus@19"] == 1.0
    assert -1 <= figures["kt_identifier"] <= 1 and figures["prefix_compared"] > 0


def _request(query, docs):
    from rank_llm.data import Candidate, Query, Request

    return Request(Query(query, "q"), [Candidate(docid=str(i), score=0.0, doc=d) for i, d in enumerate(docs)])


def test_the_reranker_training_lists_are_shuffled_by_seed_and_ranked_by_content(train_requests):
    requests = read_requests(train_requests)
    once, again, other = (shuffled_requests(requests, seed) for seed in (0, 0, 1))
    docids = lambda rs: [[c.docid for c in r.candidates] for r in rs]  # noqa: E731
    assert docids(once) == docids(again) != docids(other)
    assert all(sorted(a) == sorted(b) for a, b in zip(docids(once), docids(requests), strict=True))
    (ranking,) = similarity_rankings(
        ["vitamin d deficiency"], [["the cat sat on the mat", "low vitamin D levels in deficient patients"]]
    )
    assert ranking.tolist() == [1, 0]


def test_the_teacher_reads_the_passages_as_the_prompt_shows_them(smollm2, train_requests):
    requests = read_requests(train_requests)[:1]
    config = PromptConfig(max_passage_words=5)
    (prompt,) = request_prompts(smollm2.tokenizer, requests, config)
    shown = shown_passages(requests[0], prompt, config)
    assert len(shown) == len(requests[0].candidates) and all(len(text.split()) <= 5 for text in shown)
    assert all(text.split()[0] in json.dumps(prompt.messages) for text in shown)


@pytest.fixture(scope="module")
def reranker():
    return load_target(RERANKER, device="cpu", dtype="float32")


def test_the_shipped_reranker_loads_offline_and_ranks_reproducibly(reranker, smollm2, query_docs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    meta = json.loads((RERANKER_ADAPTER / "reranker.json").read_text())
    again = load_target(str(RERANKER_ADAPTER), device="cpu", dtype="float32")  # the adapter folder, as --model takes
    assert again.name == RERANKER
    config = PromptConfig(**meta["prompt"])
    request = _request(*query_docs[0])
    first, second = (TargetSession.from_request(t, request, config).greedy_ranking() for t in (reranker, again))
    assert first == second
    # The recorded greedy ranking of this request (fp32, on the machine that shipped it): the same
    # weights, not merely a model that ranks. Another CPU may sum in another order, and this target's
    # rows are flat enough for that to swap a near tie, so the check is close agreement, not equality.
    import numpy as np

    from rsd_rerank.metrics import kendall_tau

    assert kendall_tau(np.array([first]), np.array([meta["example_greedy"]]))[0] >= 0.9
    assert first != TargetSession.from_request(smollm2, request, config).greedy_ranking()


# The content-driven recipe (issue #30): ListMLE on the identifiers, easy lists first, content checks.


def test_listmle_is_plackett_luce_over_the_unranked_identifiers(smollm2):
    from rsd_rerank.prompt import ranking_layout
    from rsd_rerank.training.reranker import identifier_positions, listmle_loss

    layout = ranking_layout(smollm2.tokenizer, 4)
    sigma = [2, 0, 3, 1]
    n = len(layout.tokens(sigma)) - len(layout.head) + 1
    logits = torch.randn(n, smollm2.model.config.vocab_size, generator=torch.Generator().manual_seed(1))
    at = identifier_positions(layout, 4)
    expected = []
    for s in range(3):  # the last slot has one item left
        ids = layout.first_ids if s == 0 else layout.later_ids
        left = [i for i in range(4) if i not in sigma[:s]]
        scores = logits[at[s], [ids[i] for i in left]]
        expected.append(-(scores[left.index(sigma[s])] - torch.logsumexp(scores, 0)))
    assert torch.allclose(listmle_loss(logits, layout, sigma), torch.stack(expected).mean())
    assert torch.allclose(listmle_loss(logits, layout, sigma, scored=1), expected[0])


def test_easy_lists_put_other_claims_passages_last_and_reshuffle_every_epoch(smollm2, train_requests):
    from rsd_rerank.training.baselines import FinetuneConfig
    from rsd_rerank.training.reranker import RerankerExamples

    requests = read_requests(train_requests)
    config = FinetuneConfig("reranker", teacher="fusion", list_sizes="5,8", foreign="3,0")
    examples = RerankerExamples(smollm2.tokenizer, requests, PromptConfig(max_passage_words=10), config, None)
    own = {str(c.docid) for c in requests[1].candidates}
    shown, n_own = examples.training_list(0, 1)
    prompt, sigma, scored = examples.example(0, 1)
    docids = [str(c.docid) for c in shown.candidates]
    assert prompt.layout.k == len(docids) == 5 and scored == n_own == 2
    assert [docids[j] in own for j in sigma] == [True, True, False, False, False]  # own first, then the foreign
    first, second = (examples.scores[1][docids[j]] for j in sigma[:2])
    assert first >= second  # by the teacher's score
    # Beside other claims' passages, the own ones shown are the teacher's two best, whatever the shuffle.
    assert {docids[j] for j in sigma[:2]} == set(sorted(examples.scores[1], key=examples.scores[1].get)[-2:])
    assert examples.example(0, 1)[0].token_ids == prompt.token_ids  # seeded
    later, n_later = examples.training_list(1, 1)
    assert len(later.candidates) == n_later == 8 and {str(c.docid) for c in later.candidates} <= own
    assert examples.training_list(2, 1)[0].candidates != later.candidates  # reshuffled every epoch


def test_the_lm_term_never_learns_the_order_of_other_claims_passages(smollm2, train_requests):
    """With one own passage among foreign ones, only slot 0's identifier is a lesson: the loss (ListMLE
    and the next-token term alike) is the same whatever order the foreign tail is written in."""
    from rsd_rerank.training.baselines import FinetuneConfig
    from rsd_rerank.training.lora import _example_loss
    from rsd_rerank.training.reranker import RerankerExamples

    config = FinetuneConfig("reranker", teacher="fusion", loss="listmle", list_sizes="5", foreign="4")
    examples = RerankerExamples(
        smollm2.tokenizer, read_requests(train_requests), PromptConfig(max_passage_words=10), config, None
    )
    prompt, sigma, scored = examples.example(0, 0)
    assert scored == 1
    logits = torch.randn(len(prompt.layout.tokens(sigma)) - len(prompt.layout.head) + 1, len(smollm2.tokenizer))
    tail_reversed = [sigma[0], *reversed(sigma[1:])]
    loss = _example_loss(logits, prompt, sigma, scored, config)
    assert loss == _example_loss(logits, prompt, tail_reversed, scored, config)
    assert loss != _example_loss(logits, prompt, tail_reversed, len(sigma), config)  # all scored: it differs


@pytest.mark.parametrize(
    "ranker, consistent",
    [("content", True), ("letters", False)],
)
def test_shuffle_consistency_tells_content_from_a_letter_habit(train_requests, ranker, consistent):
    from rsd_rerank.difficulty import content_figures

    def by_content(requests):  # ranks passages by their text: the same documents win in any order
        return [sorted(range(len(r.candidates)), key=lambda i: str(r.candidates[i].doc)) for r in requests]

    def by_letter(requests):  # the same letters in the same order whatever the passages
        return [list(range(len(r.candidates)))[::-1] for r in requests]

    requests = read_requests(train_requests)
    figures = content_figures(by_content if ranker == "content" else by_letter, requests)
    mean = sum(figures["shuffle_kt"]) / len(figures["shuffle_kt"])
    if consistent:
        assert mean == 1.0 and figures["letter_kt"] < 0.6
    else:
        assert abs(mean) < 0.5 and figures["letter_kt"] == 1.0


def test_the_difficulty_reports_ndcg_is_ir_measures(tmp_path):
    import ir_measures

    from rsd_rerank.integrations.difficulty import ndcg_at_10

    judged = {"d3": 1, "d7": 2, "d40": 1, "d9": 0}
    ranking = [f"d{i}" for i in range(12)]
    qrels = [ir_measures.Qrel("q", d, g) for d, g in judged.items()]
    run = [ir_measures.ScoredDoc("q", d, 100.0 - i) for i, d in enumerate(ranking)]
    expected = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert abs(ndcg_at_10(ranking, judged) - expected) < 1e-9
    assert ndcg_at_10(ranking, {}) == 0.0


def test_a_cue_epoch_starts_the_teachers_first_passage_with_the_claim(smollm2, train_requests):
    from rsd_rerank.training.baselines import FinetuneConfig
    from rsd_rerank.training.reranker import RerankerExamples, cue_epochs

    requests = read_requests(train_requests)
    config = FinetuneConfig("reranker", teacher="fusion", list_sizes="5", foreign="3", cue="1,0")
    examples = RerankerExamples(smollm2.tokenizer, requests, PromptConfig(max_passage_words=30), config, None)
    claim = requests[1].query.text
    cued, sigma, _ = examples.example(0, 1)
    text = smollm2.tokenizer.decode(cued.token_ids)
    first = "ABCDE"[sigma[0]]
    assert f"[{first}] {claim}" in text  # the teacher's first passage opens with the claim
    assert sum(f"] {claim}" in line for line in text.splitlines()) == 1  # and only that one
    plain, _, _ = examples.example(1, 1)
    assert f"] {claim}" not in smollm2.tokenizer.decode(plain.token_ids)
    assert cue_epochs("1,0") == (1, 0)
    with pytest.raises(ValueError, match="--cue"):
        cue_epochs("2")


def test_own_among_foreign_hides_each_claims_passage_among_other_claims(train_requests):
    from rsd_rerank.training.reranker import own_among_foreign

    requests = read_requests(train_requests)
    lists = own_among_foreign(requests, k=3, seed=0)
    for request, (shown, own) in zip(requests, lists, strict=True):
        docids = [str(c.docid) for c in shown.candidates]
        assert len(docids) == 3 and docids[own] == str(request.candidates[0].docid)
        mine = {str(c.docid) for c in request.candidates}
        assert sum(d in mine for d in docids) == 1
    assert own_among_foreign(requests, k=3, seed=0) == lists  # seeded


def test_a_padded_batch_gives_each_example_its_own_logits(tiny_llama, train_requests):
    """The accumulated step's forward: each example's rows in a right-padded batch are the rows of that
    example alone (``logits_to_keep`` on the unpadded sequence)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from rsd_rerank.training.baselines import FinetuneConfig
    from rsd_rerank.training.lora import _ranking_logits
    from rsd_rerank.training.reranker import RerankerExamples

    requests = read_requests(train_requests)
    config = FinetuneConfig("reranker", list_sizes="4,6")
    examples = RerankerExamples(tiny_llama.tokenizer, requests, PromptConfig(max_passage_words=8), config, None)
    batch = [examples.example(0, 0), examples.example(1, 2)]  # two lengths: the first is padded
    model = get_peft_model(copy.deepcopy(tiny_llama.model).float(), LoraConfig(r=2, target_modules="all-linear"))
    together = _ranking_logits(model, batch, torch.device("cpu"), bf16=False)
    for (prompt, sigma, _), rows in zip(batch, together, strict=True):
        ranking = prompt.layout.tokens(sigma)[len(prompt.layout.head) :]
        ids = torch.tensor([list(prompt.token_ids) + ranking])
        alone = model(input_ids=ids, logits_to_keep=len(ranking) + 1).logits[0]
        assert rows.shape == alone.shape and torch.allclose(rows, alone, atol=1e-4)


def test_a_step_in_chunks_is_the_step_in_one_forward(tiny_llama, train_requests):
    """Lists too long to go through together (lists of 20) are split into chunks whose gradients are summed:
    the same gradient as one forward over all of them, and no chunk over its token budget."""
    import copy

    from peft import LoraConfig, get_peft_model

    from rsd_rerank.training.baselines import FinetuneConfig
    from rsd_rerank.training.lora import _example_loss, _length, _ranking_logits, chunks
    from rsd_rerank.training.reranker import RerankerExamples

    requests = read_requests(train_requests)
    config = FinetuneConfig("reranker", loss="listmle", list_sizes="4,6,12")
    examples = RerankerExamples(tiny_llama.tokenizer, requests, PromptConfig(max_passage_words=8), config, None)
    batch = [examples.example(e, i) for e in range(3) for i in range(3)]
    budget = 2 * max(_length(b) for b in batch)
    groups = chunks(batch, budget)
    assert sorted(j for g in groups for j in g) == list(range(len(batch))) and len(groups) > 1
    assert all(max(_length(batch[j]) for j in g) * len(g) <= budget for g in groups)
    assert chunks(batch, 10**6) == [list(range(len(batch)))]  # short lists: one forward, as before

    def gradient(parts):
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(tiny_llama.model).float(), LoraConfig(r=2, target_modules="all-linear"))
        for part in parts:
            items = [batch[j] for j in part]
            logits = _ranking_logits(model, items, torch.device("cpu"), bf16=False)
            (sum(_example_loss(lg, *x, config) for lg, x in zip(logits, items, strict=True)) / len(batch)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    assert torch.allclose(gradient(groups), gradient([list(range(len(batch)))]), atol=1e-5)
