"""The agent: Plackett–Luce policy, RPO loss pieces, networks, checkpoints."""

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from rsd_rerank.agent import (
    BUNDLED,
    FEATURES,
    Agent,
    AgentConfig,
    AgentProposer,
    gumbel_perturbed,
    item_features,
    load_agent,
    pl_log_prob,
    resolve_agent,
    save_agent,
)
from rsd_rerank.decoding import decode
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.proposers import Round
from rsd_rerank.session import TargetSession
from rsd_rerank.training.rpo import advantages, kl_to_reference, rpo_loss


def _pl_probability(logits, ranking):
    p, rest = 1.0, list(ranking)
    for item in ranking:
        p *= math.exp(logits[item]) / sum(math.exp(logits[j]) for j in rest)
        rest.remove(item)
    return p


def test_gumbel_top_k_samples_plackett_luce():
    logits = torch.tensor([1.5, 0.2, -0.7])
    g = torch.Generator().manual_seed(0)
    n = 30000
    samples = torch.argsort(-gumbel_perturbed(logits.expand(n, -1).clone(), g), dim=1)
    perms = list(itertools.permutations(range(3)))
    counts = [int((samples == torch.tensor(p)).all(dim=1).sum()) for p in perms]
    expected = [n * _pl_probability(logits.tolist(), p) for p in perms]
    assert sum(expected) == pytest.approx(n)
    assert chisquare(counts, expected).pvalue > 0.01


def test_pl_log_prob_sums_over_the_agent_slots_only():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0]])
    ranking = torch.tensor([[2, 0, 4, 1, 3]])
    full = math.log(_pl_probability(logits[0].tolist(), ranking[0].tolist()))
    assert float(pl_log_prob(logits, ranking, torch.tensor([0]))) == pytest.approx(full, abs=1e-5)
    # from slot 2 on: items 4, 1, 3 chosen among themselves
    sub = logits[0, [4, 1, 3]].tolist()
    tail = math.log(_pl_probability(sub, [0, 1, 2]))
    assert float(pl_log_prob(logits, ranking, torch.tensor([2]))) == pytest.approx(tail, abs=1e-5)
    assert float(pl_log_prob(logits, ranking, torch.tensor([5]))) == 0.0


def test_advantages():
    returns = torch.tensor([0.5, 0.7, 0.2, 0.5])
    assert torch.allclose(advantages(returns, "reference"), torch.tensor([0.2, -0.3, 0.0]))
    assert torch.allclose(advantages(returns, "group"), torch.tensor([0.35, -0.4, 0.05]))
    with pytest.raises(ValueError, match="unknown advantage"):
        advantages(returns, "mean")


def _state(b=3, t=2, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rankings = torch.stack([torch.stack([torch.randperm(k, generator=g) for _ in range(t)]) for _ in range(b)])
    matrices = torch.log_softmax(3 * torch.randn(b, t, k, k, generator=g), dim=-1)
    accepted = torch.tensor([[0, 0], [1, 2], [0, 1]])[:b, :t]  # i* of each round
    return Round(rankings, matrices, accepted)


def _random_agent(seed: int, features: str = "rows") -> Agent:
    """An equivariant agent with random weights everywhere: away from its consensus start."""
    torch.manual_seed(seed)
    agent = Agent(AgentConfig("equivariant", features=features))
    for p in agent.parameters():
        p.data.normal_(0, 0.3)
    return agent


@pytest.mark.parametrize("network", ["paper", "equivariant", "mlp"])
def test_networks_score_every_item(network):
    state = _state(k=10)
    agent = Agent(AgentConfig(network, k=None if network == "equivariant" else 10))
    assert agent(state).shape == (3, 10)


@pytest.mark.parametrize("features", ["rows", "jacobi"])
def test_equivariant_network_follows_a_relabelling_of_items_and_serves_any_k(features):
    agent = _random_agent(0, features)
    state = _state(k=7)
    perm = torch.randperm(7)  # new index of old item i is inv[i]
    inv = torch.argsort(perm)
    relabelled = Round(inv[state.rankings], state.matrices[..., perm], state.accepted)
    assert torch.allclose(agent(relabelled), agent(state)[:, perm], atol=1e-5)
    assert agent(_state(k=12)).shape == (3, 12)
    assert item_features(state, features).shape == (3, 7, FEATURES[features])


def test_untrained_equivariant_agent_is_the_consensus_proposer(tiny_llama, query_docs):
    query, docs = query_docs[0]
    session = TargetSession(tiny_llama, query, docs[:8])
    agent = Agent(AgentConfig("equivariant"))
    ours = decode(session, AgentProposer(agent), 3).ranking
    assert ours == rank(session, DecodingConfig("consensus", 3)).ranking


def test_kl_is_zero_when_policy_equals_reference():
    logits = torch.randn(4, 6)
    free = torch.rand(4, 6) > 0.3
    assert torch.allclose(kl_to_reference(logits, logits.clone(), free), torch.zeros(4), atol=1e-6)
    assert float(kl_to_reference(logits, torch.randn(4, 6), torch.ones(4, 6, dtype=torch.bool)).min()) > 0


def test_rpo_gradient_is_zero_when_every_advantage_is_zero(tiny_llama, query_docs):
    query, docs = query_docs[0]
    session = TargetSession(tiny_llama, query, docs[:8])
    agent = _random_agent(0)
    reference = copy.deepcopy(agent)
    # every trajectory greedy: equal returns, zero advantages; policy = reference: KL at its minimum
    decoded = decode(session, AgentProposer(agent), 3, trajectories=5)
    loss, _ = rpo_loss(agent, reference, decoded, torch.tensor(session.greedy_ranking()), "reference", 0.1, 3)
    loss.backward()
    assert decoded.steps, "the test needs at least one proposer step"
    assert all(
        p.grad is None or torch.allclose(p.grad, torch.zeros_like(p.grad), atol=1e-7) for p in agent.parameters()
    )


def test_rollout_row_zero_is_the_greedy_reference(tiny_llama, query_docs):
    query, docs = query_docs[1]
    session = TargetSession(tiny_llama, query, docs[:10])
    agent = _random_agent(1)
    g = torch.Generator().manual_seed(0)
    sampled = decode(session, AgentProposer(agent, g, greedy_rows=1), 4, trajectories=6)
    greedy = decode(session, AgentProposer(agent), 4)
    assert sampled.rankings[0].tolist() == greedy.ranking
    assert len({tuple(r) for r in sampled.rankings.tolist()}) > 1  # the others explore
    again = decode(session, AgentProposer(agent, torch.Generator().manual_seed(0), greedy_rows=1), 4, trajectories=6)
    assert torch.equal(again.rankings, sampled.rankings)  # a seed fixes every trajectory


def _trained_like(agent: Agent, target) -> Agent:
    from rsd_rerank.targets import tokenizer_fingerprint

    agent.metadata.update(target=target.name, tokenizer=tokenizer_fingerprint(target.tokenizer))
    return agent


def test_checkpoint_round_trip_reproduces_scores(tmp_path, tiny_llama):
    torch.manual_seed(0)
    agent = _trained_like(Agent(AgentConfig("paper", k=10)), tiny_llama)
    save_agent(agent, tmp_path / "a")
    loaded = load_agent(tmp_path / "a", target=tiny_llama, k=10)
    state = _state(k=10)
    assert torch.equal(loaded(state), agent.eval()(state))
    assert loaded.config == agent.config
    # rewritten in the same process (train, then load): the new weights, not a cached copy
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(1.0)
    save_agent(agent, tmp_path / "a")
    assert torch.equal(load_agent(tmp_path / "a", target=tiny_llama, k=10)(state), agent(state))


def test_mismatched_checkpoints_are_clear_errors(tmp_path, tiny_llama, caplog):
    agent = _trained_like(Agent(AgentConfig("paper", k=10)), tiny_llama)
    save_agent(agent, tmp_path / "a")
    with pytest.raises(ValueError, match="trained for K = 10 items, the list has 20"):
        load_agent(tmp_path / "a", target=tiny_llama, k=20)
    agent.metadata["tokenizer"] = "0123456789abcdef"
    save_agent(agent, tmp_path / "b")
    with pytest.raises(ValueError, match="identifier tokens differ"):
        load_agent(tmp_path / "b", target=tiny_llama, k=10)
    with pytest.raises(ValueError, match="not an agent checkpoint"):
        load_agent(tmp_path / "missing")
    with pytest.raises(ValueError, match="no agent checkpoint 'nope'"):
        resolve_agent("nope", tiny_llama, 10)
    with pytest.raises(ValueError, match="5 heads"):
        AgentConfig("paper", k=12)
    agent = _trained_like(Agent(AgentConfig("equivariant")), tiny_llama)
    agent.metadata["target"] = "another-model"
    save_agent(agent, tmp_path / "c")
    load_agent(tmp_path / "c", target=tiny_llama, k=10)
    assert "adaptation" in caplog.text


def test_sampling_from_softmax_normalised_scores_is_nearly_uniform():
    from rsd_rerank.agent import exploration_report

    report = exploration_report(torch.linspace(3, -3, 20))
    assert report["softmax_normalised"] < 0.1 < 0.5 < report["raw_scores"]
    assert np.isfinite(list(report.values())).all()


def test_checkpoint_loads_are_private_and_follow_agent_json(tmp_path, tiny_llama):
    agent = _trained_like(_random_agent(1), tiny_llama)
    save_agent(agent, tmp_path / "a")
    first = load_agent(tmp_path / "a", target=tiny_llama)
    second = load_agent(tmp_path / "a", target=tiny_llama)
    assert first is not second
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # one caller training its copy touches nobody else's
    state = _state(k=8)
    assert torch.equal(second(state), load_agent(tmp_path / "a", target=tiny_llama)(state))
    # agent.json rewritten alone (weights untouched): the new config is read, not a cached one
    meta = json.loads((tmp_path / "a" / "agent.json").read_text())
    meta["config"]["temperature"] = 2.0
    (tmp_path / "a" / "agent.json").write_text(json.dumps(meta))
    assert load_agent(tmp_path / "a", target=tiny_llama).config.temperature == 2.0


def _other_tokenizer_llama():
    """A random Llama whose tokenizer is not SmolLM2's: a byte-level BPE trained here on the examples'
    text, with a ChatML template (nothing downloaded)."""
    from rsd_rerank.targets import bpe_tokenizer, random_llama

    examples = Path(__file__).resolve().parent.parent / "examples" / "requests.jsonl"
    texts = [json.dumps(json.loads(line)) for line in examples.read_text().splitlines()] + [
        "[A] > [B] > [C] [12] > [3] You are RankLLM, an intelligent assistant that can rank passages."
    ]
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    return random_llama(tokenizer=bpe_tokenizer(texts, vocab_size=600), **shape)


@pytest.mark.parametrize("template", ["rank_zephyr_alpha_template.yaml", "rank_zephyr_template.yaml"])
def test_rsd_serves_a_model_with_another_tokenizer_through_the_universal_agent(query_docs, caplog, template, tmp_path):
    """No bundled agent was trained on this model or its tokenizer: ``rsd`` runs with the bundled
    universal agent (equivariant: it reads no tokens) and says so, with letters and with numbers; K-tied
    agents keep refusing another tokenizer."""
    import logging

    from rsd_rerank.agent.store import UNIVERSAL, _warn_universal

    _warn_universal.cache_clear()  # the warning comes once per target and process
    from rsd_rerank.methods import DecodingConfig, rank
    from rsd_rerank.prompt import PromptConfig
    from rsd_rerank.targets import tokenizer_fingerprint

    target = _other_tokenizer_llama()
    assert tokenizer_fingerprint(target.tokenizer) not in {
        json.loads((BUNDLED / n / "agent.json").read_text())["tokenizer"] for n in ("random-llama", "smollm2")
    }
    query, docs = query_docs[0]
    session = TargetSession(target, query, docs[:12], PromptConfig(template=template, max_passage_words=20))
    with caplog.at_level(logging.WARNING):
        decoded = rank(session, DecodingConfig("rsd", budget=session.k))
    assert sorted(decoded.ranking) == list(range(12))
    assert decoded.ranking == session.greedy_ranking()  # T >= K: the exact target, whatever the tokenizer
    assert f"bundled universal agent {UNIVERSAL!r}" in caplog.text
    universal = resolve_agent(None, target, 12)
    assert universal.config.network == "equivariant" and len(universal.metadata["targets"]) > 1
    paper = Agent(AgentConfig("paper", k=10), {"tokenizer": "0123456789abcdef", "target": "x"})
    save_agent(paper, tmp_path / "paper")
    with pytest.raises(ValueError, match="identifier tokens differ"):
        load_agent(tmp_path / "paper", target=target, k=10)


def test_every_target_has_its_default_agent_and_the_rest_the_universal_one(tiny_llama):
    """``DEFAULT_AGENT`` names bundled agents trained on their targets; a target outside it (here a random
    Llama of another shape) gets the universal agent, trained across several targets."""
    from rsd_rerank.agent.store import DEFAULT_AGENT, UNIVERSAL

    for target, name in DEFAULT_AGENT.items():
        assert json.loads((BUNDLED / name / "agent.json").read_text())["target"] == target
    meta = json.loads((BUNDLED / UNIVERSAL / "agent.json").read_text())
    assert len(meta["targets"]) >= 5 and meta["config"]["network"] == "equivariant"
    assert tiny_llama.name not in DEFAULT_AGENT
    # The first bundled agents predate the Jacobi features (their configs name none): they load with rows.
    assert "features" not in json.loads((BUNDLED / "random-llama" / "agent.json").read_text())["config"]
    assert load_agent(BUNDLED / "random-llama").config.features == "rows"
    assert load_agent(BUNDLED / UNIVERSAL).config.features == "jacobi" == AgentConfig().features
    assert resolve_agent(None, tiny_llama, 20).metadata["targets"] == meta["targets"]
