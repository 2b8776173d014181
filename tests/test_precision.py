"""Exactness in the precision a target runs in: batch-invariant passes (``BatchConfig.batch_invariant``) make
each slot's row a function of the items before it alone, bit for bit, so that in bf16 every budgeted
method at T >= K writes the greedy ranking and a batch gives each query what it gets alone."""

import random

import pytest
import torch

from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.prompt import DEFAULT_TEMPLATE, NUMERIC_TEMPLATE, PromptConfig, build_prompt
from rsd_rerank.runs import BatchConfig
from rsd_rerank.session import TargetSession, batched_sessions
from rsd_rerank.targets import random_llama

WORDS = "cell protein gene tumor mouse receptor dose brain blood risk trial virus insulin cancer liver".split()


def _tiny_llama(dtype: str):
    return random_llama(
        seed=3,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        dtype=dtype,
    )


@pytest.fixture(scope="module")
def bf16_llama():
    return _tiny_llama("bfloat16")


def _random_prompts(target, n: int, seed: int, numeric: bool, k_max: int) -> list:
    rng = random.Random(seed)
    config = PromptConfig(template=NUMERIC_TEMPLATE if numeric else DEFAULT_TEMPLATE, max_passage_words=8)
    prompts = []
    for _ in range(n):
        k = rng.randint(5, k_max)
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(k)]
        prompts.append(build_prompt(target.tokenizer, " ".join(rng.sample(WORDS, 4)), docs, config))
    return prompts


def _rankings(target, prompts, method: str, budget: int, batch_size: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    for group, session in batched_sessions(target, prompts, BatchConfig(batch_size, None, True)):
        decoded = rank_many(session, DecodingConfig(method=method, budget=budget))
        for q, i in enumerate(group):
            out[i] = decoded[q].rankings[0].tolist()
    return out


@pytest.mark.parametrize("numeric", [True, False], ids=["numbers", "letters"])
def test_in_bf16_every_method_at_t_ge_k_and_every_batch_size_give_the_greedy_ranking(bf16_llama, numeric):
    """The property of issue #31 on random prompts (numbers up to 30 candidates, letters up to 20)."""
    prompts = _random_prompts(bf16_llama, 6, seed=11 if numeric else 12, numeric=numeric, k_max=30 if numeric else 20)
    greedy = _rankings(bf16_llama, prompts, "greedy", 0, batch_size=1)
    assert _rankings(bf16_llama, prompts, "greedy", 0, batch_size=6) == greedy
    budget = max(len(g) for g in greedy)
    for method in ("gsd", "consensus", "pdm", "rsd"):
        assert _rankings(bf16_llama, prompts, method, budget, batch_size=3) == greedy, method


@pytest.fixture(scope="module")
def bf16_llama_256():
    """random-llama's own size (hidden 256, 4 layers): where bf16 kernels round differently for other shapes."""
    return random_llama(seed=3, dtype="bfloat16")


def test_a_slots_row_does_not_depend_on_what_follows_it_or_on_the_batch(bf16_llama_256):
    """The guard itself, where the default passes break it: numbers (trie passes) in bf16. A ranking's rows
    are the same bits verified alone in a fresh session, after another ranking that shares a prefix
    with it (the default passes would feed only the tail), and in a batch of three prompts."""
    target = bf16_llama_256
    prompts = _random_prompts(target, 3, seed=5, numeric=True, k_max=14)
    k = prompts[0].layout.k
    gen = torch.Generator().manual_seed(0)
    for shared in (1, 3, k // 2):
        head = torch.randperm(k, generator=gen).tolist()
        tail = [i for i in torch.randperm(k, generator=gen).tolist() if i not in head[:shared]]
        other = head[:shared] + tail
        fresh = TargetSession.from_prompts(target, prompts[:1], invariant=True).verify(other).matrices[0]
        after = TargetSession.from_prompts(target, prompts[:1], invariant=True)
        first = after.verify(head).matrices[0]
        again = after.verify(other).matrices[0]
        batched = TargetSession.from_prompts(target, prompts, invariant=True).verify(other, 0).matrices[0]
        assert torch.equal(fresh, again) and torch.equal(fresh, batched)
        assert torch.equal(first[: shared + 1], fresh[: shared + 1])  # the same items before: the same rows


def test_batch_invariant_greedy_is_the_fixed_point_of_its_passes(bf16_llama):
    prompts = _random_prompts(bf16_llama, 2, seed=9, numeric=True, k_max=25)
    session = TargetSession.from_prompts(bf16_llama, prompts, invariant=True)
    for q in range(2):
        greedy = session.greedy_ranking(q)
        assert int(session.verify(greedy, q).accepted[0]) == len(greedy)


def test_in_fp16_too():
    """The same property in float16 (on a GPU the other low precision), numbers, fewer prompts."""
    fp16 = _tiny_llama("float16")
    prompts = _random_prompts(fp16, 3, seed=21, numeric=True, k_max=24)
    greedy = _rankings(fp16, prompts, "greedy", 0, batch_size=1)
    assert _rankings(fp16, prompts, "greedy", 0, batch_size=3) == greedy
    budget = max(len(g) for g in greedy)
    for method in ("gsd", "rsd"):
        assert _rankings(fp16, prompts, method, budget, batch_size=2) == greedy, method
