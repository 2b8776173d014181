"""Models whose attention layers see a window shorter than the prompt (Mistral's ``sliding_window``, Gemma 3's
interleaved sliding and global layers) rerank exactly as transformers' own greedy ``generate`` does, with its
own sliding-window cache: the session keeps every position of every layer and the model's mask applies the
window (issue #32)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.prompt import PromptConfig, build_prompt
from rsd_rerank.runs import BatchConfig
from rsd_rerank.session import TargetSession, batched_sessions
from rsd_rerank.targets import load_target
from tests.conftest import EXAMPLES

WINDOW = 64


def _mistral(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=WINDOW, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return MistralForCausalLM(config).eval()


def _gemma3(tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
        layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["mistral", "gemma3"])
def windowed(request, smollm2):
    model = {"mistral": _mistral, "gemma3": _gemma3}[request.param](smollm2.tokenizer)
    return load_target(model, tokenizer=smollm2.tokenizer)


@pytest.fixture(scope="module")
def claims():
    """Two example claims, 20 candidates each, passages cut to 30 words: prompts of ~630 tokens, nine windows."""
    requests = [json.loads(line) for line in (EXAMPLES / "requests.jsonl").read_text().splitlines()]
    return [(r["query"]["text"], [c["doc"] for c in r["candidates"]][:20]) for r in requests[:2]]


def hf_greedy_ranking(target, prompt) -> list[int]:
    """transformers' own greedy ``generate`` (its cache, its masks), constrained to a ranking: the
    separators forced, each slot's identifier among those not yet written."""
    layout = prompt.layout
    group = 1 + len(layout.sep)

    def allowed(_batch, ids):
        written = ids[len(prompt.token_ids) :].tolist()
        slot, at = divmod(len(written), group)
        if at:
            return [layout.sep[at - 1]]
        pool = layout.first_ids if slot == 0 else layout.later_ids
        return [t for t in pool if t not in written[::group]]

    ids = torch.tensor([list(prompt.token_ids)])
    new = layout.k * group - len(layout.sep)
    out = target.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
        prefix_allowed_tokens_fn=allowed, pad_token_id=target.tokenizer.pad_token_id,
    )  # fmt: skip
    tokens = out[0, len(prompt.token_ids) :].tolist()
    return [(layout.first_ids if s == 0 else layout.later_ids).index(tokens[s * group]) for s in range(layout.k)]


def test_a_windowed_model_reranks_as_its_greedy_generate(windowed, claims):
    for query, docs in claims:
        session = TargetSession(windowed, query, docs, PromptConfig(max_passage_words=30))
        assert len(session.prompt.token_ids) > 9 * WINDOW
        greedy = session.greedy_ranking()
        assert greedy == hf_greedy_ranking(windowed, session.prompt)
        for method in ("gsd", "rsd", "pdm"):  # T >= K verifies the target whole (Theorem 1)
            session.forget()
            ranked = rank_many(session, DecodingConfig(method, 20))[0].rankings[0].tolist()
            assert ranked == greedy, method


def test_the_window_is_in_effect(windowed, claims):
    """The same weights with the window opened to the whole prompt rank differently: a cache or mask that
    dropped the window would be caught by the test above."""
    query, docs = claims[0]
    wide = copy.deepcopy(windowed.model)
    wide.config.sliding_window = 4096
    opened = load_target(wide, tokenizer=windowed.tokenizer)
    config = PromptConfig(max_passage_words=30)
    assert (
        TargetSession(opened, query, docs, config).greedy_ranking()
        != TargetSession(windowed, query, docs, config).greedy_ranking()
    )


def test_batched_windowed_sessions_equal_one_query_at_a_time(windowed, claims):
    """Prompts of different lengths, left-padded into one session: each query's ranking is its own."""
    config = PromptConfig(max_passage_words=30)
    prompts = [build_prompt(windowed.tokenizer, q, docs[: 20 - 7 * i], config) for i, (q, docs) in enumerate(claims)]
    alone = [TargetSession.from_prompts(windowed, [p]).greedy_rankings()[0] for p in prompts]
    for _, session in batched_sessions(windowed, prompts, BatchConfig(batch_size=2)):
        assert session.greedy_rankings() == dict(enumerate(alone))
        decoded = rank_many(session, DecodingConfig("gsd", 3))
        for q, prompt in enumerate(prompts):
            single = TargetSession.from_prompts(windowed, [prompt])
            assert (
                decoded[q].rankings[0].tolist() == rank_many(single, DecodingConfig("gsd", 3))[0].rankings[0].tolist()
            )
