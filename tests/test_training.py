"""Training end to end on a small random Llama: the cache, Stage I, RPO, resume, the CLI."""

import json
import random

import numpy as np
import pytest
import torch

from rsd_rerank.agent import AgentConfig, load_agent
from rsd_rerank.cli import main
from rsd_rerank.runs import BatchConfig, read_requests
from rsd_rerank.training import TrainConfig, train
from rsd_rerank.training.cache import cached_queries


def _requests(requests_json, n, k, seed=0):
    """n requests of k passages each, drawn from the example passages with the example queries."""
    rng = random.Random(seed)
    passages = [c for r in requests_json for c in r["candidates"]]
    queries = [r["query"]["text"] for r in requests_json]
    return [
        {"query": {"qid": f"q{i}", "text": queries[i % len(queries)]}, "candidates": rng.sample(passages, k)}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, requests_json):
    path = tmp_path_factory.mktemp("train") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _requests(requests_json, 24, 10)))
    return path


def test_training_raises_validation_kt(tiny_llama, train_file, tmp_path):
    requests = read_requests(train_file)
    config = TrainConfig(
        agent=AgentConfig("paper", k=10),
        budget=3,
        group=4,
        stage1_epochs=6,
        stage1_lr=3e-3,
        rpo_epochs=1,
        rpo_queries=8,
        batch=4,
        val_queries=6,
        seed=0,
    )
    agent = train(tiny_llama, requests, tmp_path / "agent", config)
    history = agent.metadata["history"]
    before, after = history[0]["validation"]["T=3"]["KT"], history[-1]["validation"]["T=3"]["KT"]
    assert history[0]["stage"] == "init" and history[-1]["stage"] == "rpo"
    assert after > before + 0.05, (before, after)
    meta = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert meta["config"]["network"] == "paper" and meta["data"]["val_queries"] == 6
    assert load_agent(tmp_path / "agent", target=tiny_llama, k=10).config.k == 10
    assert (tmp_path / "agent" / "stage1" / "agent.json").exists()  # the "w/o RPO" agent


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_killed_run_resumes_to_the_same_agent(tiny_llama, train_file, tmp_path, monkeypatch, batch_size):
    # batch_size 3: the cache, validation and RPO rollouts run in batched sessions; rollouts stop at
    # each Adam step (batch=2 queries), so a resume starts where the uninterrupted run would.
    import rsd_rerank.training.trainer as train_module
    from rsd_rerank.runs import BatchConfig

    batching = BatchConfig(batch_size)

    requests = read_requests(train_file)[:12]
    config = TrainConfig(
        agent=AgentConfig("equivariant", hidden=16, layers=1),
        budget=2,
        group=3,
        stage1_epochs=1,
        rpo_epochs=1,
        rpo_queries=8,
        batch=2,
        save_every=4,
        val_queries=2,
        seed=3,
    )
    whole = train(tiny_llama, requests, tmp_path / "whole", config, batching=batching)

    calls = {"n": 0}
    real = train_module.rpo_loss

    def dies_at_the_sixth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "rpo_loss", dies_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama, requests, tmp_path / "killed", config, batching=batching)
    monkeypatch.setattr(train_module, "rpo_loss", real)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_llama, requests, tmp_path / "killed", config)
    resumed = train(tiny_llama, requests, tmp_path / "killed", config, resume=True, batching=batching)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    if batch_size > 1:  # batched rollouts sample the same trajectories as one query at a time
        alone = train(tiny_llama, requests, tmp_path / "alone", config)
        # The same trajectories, so the same weights up to the rows' own agreement: a batched pass's rows
        # equal one session's within 1e-4, not bit for bit, and with torch 2.15 / transformers 5.25 on this
        # CPU the trained weights (|w| up to 1) then differ by up to 6e-5 (a different trajectory: ~1e-2).
        for (name, a), (_, b) in zip(whole.state_dict().items(), alone.state_dict().items(), strict=True):
            assert torch.allclose(a, b, atol=2e-4), name


def test_target_cache_is_reused_and_keyed_by_prompt(tiny_llama, train_file, tmp_path):
    from rsd_rerank.prompt import PromptConfig

    requests = read_requests(train_file)[:2]
    first = cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path)
    files = sorted(tmp_path.glob("*/*.safetensors"))
    from rsd_rerank.runs import BatchConfig

    batched = cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path / "b", batching=BatchConfig(2))
    for a, b in zip(first, batched, strict=True):  # a batch computes the entries one query at a time would
        assert torch.equal(a.target, b.target) and torch.equal(a.rankings, b.rankings)
        assert torch.equal(a.accepted, b.accepted) and torch.allclose(a.matrices, b.matrices, atol=1e-4)
    again = cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path)
    assert sorted(tmp_path.glob("*/*.safetensors")) == files and len(files) == 2
    assert all(torch.equal(a.target, b.target) for a, b in zip(first, again, strict=True))
    cached_queries(tiny_llama, requests, PromptConfig(max_passage_words=20), 2, tmp_path)
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 4
    requests[1].candidates = requests[1].candidates[:1]
    with pytest.raises(ValueError, match="fewer than 2 candidates have no ranking to learn: qids q1"):
        cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path)


def test_train_cli_errors(train_file, tmp_path, capsys):
    args = ["train", "--model", "random-llama", "--requests", str(train_file), "--out", str(tmp_path / "a")]
    assert main([*args, "--val-queries", "24"]) == 2
    assert "leave none to train on" in capsys.readouterr().err
    assert main([*args[:3], "--requests", str(tmp_path / "none.jsonl"), "--out", "x"]) == 2
    assert "cannot read requests file" in capsys.readouterr().err
    mixed = tmp_path / "mixed.jsonl"
    lines = train_file.read_text().splitlines()
    short = json.loads(lines[1])
    short["candidates"] = short["candidates"][:5]
    mixed.write_text(lines[0] + "\n" + json.dumps(short) + "\n")
    assert main([*args[:3], "--requests", str(mixed), "--out", str(tmp_path / "m"), "--network", "paper"]) == 2
    assert "tied to one list length; the requests have [5, 10]" in capsys.readouterr().err
    assert main([*args, "--with-model", "random-llama:sed=1"]) == 2
    assert "--model random-llama:sed=1: unknown key 'sed'" in capsys.readouterr().err
    assert main([*args, "--with-model", "random-llama:seed=1", "--workers", "2"]) == 2
    assert "--with-model: Ray workers" in capsys.readouterr().err


def test_one_agent_learns_from_several_targets(tiny_llama, train_file, tmp_path):
    """Several targets train one agent: every target's rankings of the training requests, one shared
    split, validation over all of them, RPO rollouts grouped by target; the checkpoint names them all
    and serves a target it never saw (equivariant: any tokenizer). K-tied networks need one tokenizer."""
    from rsd_rerank.agent import resolve_agent
    from rsd_rerank.targets import bpe_tokenizer, random_llama

    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    other = random_llama(seed=1, initializer_range=0.05, **shape)
    requests = read_requests(train_file)
    config = TrainConfig(
        agent=AgentConfig("equivariant", features="jacobi"),
        budget=3,
        group=2,
        stage1_epochs=2,
        rpo_epochs=1,
        rpo_queries=6,
        batch=3,
        val_queries=6,
    )
    agent = train([tiny_llama, other], requests, tmp_path / "both", config, batching=BatchConfig(4))
    meta = json.loads((tmp_path / "both" / "agent.json").read_text())
    assert meta["targets"] == [tiny_llama.name, other.name]
    assert meta["target"] == f"{tiny_llama.name} + {other.name}"
    assert meta["data"]["train_queries"] == 2 * (24 - 6)
    assert agent.metadata["history"][-1]["stage"] == "rpo"
    # Validation pools both targets' held-out queries: equal to validating on the two in turn.
    from rsd_rerank.training.trainer import _sessions, validate

    val = [requests[i] for i in np.random.default_rng(0).permutation(24)[:6]]
    prompt = config.prompt
    cached = {t.name: cached_queries(t, val, prompt, 3) for t in (tiny_llama, other)}
    targets_by_name = {t.name: t for t in (tiny_llama, other)}
    pooled = validate(agent, [s for t in (tiny_llama, other) for s in _sessions(t, val, prompt, BatchConfig(4))],
                      cached[tiny_llama.name] + cached[other.name])  # fmt: skip
    for t, metrics in pooled.items():
        assert metrics == pytest.approx(agent.metadata["validation"][t])
    # Validation is reported per target, and the agent kept is the one whose worst target is best (the
    # untrained agent, which proposes as consensus does, among the candidates).
    from rsd_rerank.training.trainer import worst_target

    history = agent.metadata["history"]
    assert all(set(entry["per_target"]) == {tiny_llama.name, other.name} for entry in history)
    for name in (tiny_llama.name, other.name):
        alone = validate(agent, _sessions(targets_by_name[name], val, prompt, BatchConfig(4)), cached[name])
        assert alone == agent.metadata["per_target"][name]
    chosen = max(range(len(history)), key=lambda i: (worst_target(history[i]), -i))
    assert agent.metadata["chosen"] == {"stage": history[chosen]["stage"], "epoch": history[chosen]["epoch"]}
    assert agent.metadata["per_target"] == history[chosen]["per_target"]
    unseen = random_llama(seed=2, tokenizer=bpe_tokenizer(["[A] > [B] example text " * 20], 300), **shape)
    assert resolve_agent(tmp_path / "both", unseen, 10).config.features == "jacobi"
    with pytest.raises(ValueError, match="must share a tokenizer"):
        train([tiny_llama, unseen], requests, tmp_path / "paper", TrainConfig(agent=AgentConfig("paper", k=10)))
    with pytest.raises(ValueError, match="distinct targets"):
        train([tiny_llama, tiny_llama], requests, tmp_path / "same", config)


def test_one_model_under_two_templates_is_two_targets(tiny_llama, train_file, tmp_path, capsys):
    """The same model prompted with letters and with numbers trains one agent as two targets (the
    numbers-template variant of the universal agent's recipe), each validated on its own."""
    import dataclasses

    from rsd_rerank.prompt import PromptConfig

    letters = PromptConfig(max_passage_words=20)
    numbers = dataclasses.replace(letters, template="rank_zephyr_template.yaml")
    config = TrainConfig(agent=AgentConfig("equivariant", features="jacobi"), prompt=letters, budget=2,
                         stage1_epochs=1, val_queries=4)  # fmt: skip
    agent = train(
        [tiny_llama, tiny_llama], read_requests(train_file), tmp_path / "two", config, prompts=[letters, numbers]
    )
    variant = f"{tiny_llama.name}[rank_zephyr_template.yaml]"
    assert agent.metadata["targets"] == [tiny_llama.name, variant]
    assert agent.metadata["identifiers"] == "alpha+numbers"
    assert set(agent.metadata["per_target"]) == {tiny_llama.name, variant}
    with pytest.raises(ValueError, match="distinct targets"):
        train(
            [tiny_llama, tiny_llama], read_requests(train_file), tmp_path / "same", config, prompts=[numbers, numbers]
        )
    args = ["train", "--requests", str(train_file), "--out", str(tmp_path / "cli")]
    with pytest.raises(SystemExit) as parse_error:  # refused while parsing, before any model loads
        main([*args, "--with-model", "smollm2@no_such_template.yaml"])
    assert parse_error.value.code == 2 and "no_such_template.yaml" in capsys.readouterr().err


def test_each_family_of_targets_weighs_the_same_in_stage_1():
    from rsd_rerank.training.trainer import family, family_weights

    names = ["random-llama(seed=0,init=0.1,h=256,L=4)", "random-llama(seed=1)", "random-llama(seed=2)", "smollm2",
             "smollm2-reranker", "smollm2-reranker(runs/smollm2-reranker/snapshots/step-400)"]  # fmt: skip
    assert [family(n) for n in names[3:]] == ["smollm2", "smollm2-reranker", "smollm2-reranker"]
    weights = family_weights(names)
    assert sum(weights) == pytest.approx(len(names))
    by_family = {}
    for n, w in zip(names, weights, strict=True):
        by_family[family(n)] = by_family.get(family(n), 0.0) + w
    assert len(set(round(v, 9) for v in by_family.values())) == 1  # three families, equal weight each
    assert family_weights(["smollm2"]) == [1.0]


def test_the_checkpoint_score_is_the_worst_targets_not_the_pooled_mean():
    from rsd_rerank.training.trainer import worst_target

    kt = lambda *values: {f"T={t}": {"KT": v} for t, v in zip((1, 3, 5), values, strict=True)}  # noqa: E731
    suits_most = {"per_target": {"a": kt(0.9, 1.0, 1.0), "b": kt(0.9, 1.0, 1.0), "c": kt(0.1, 0.2, 0.3)}}
    even = {"per_target": {"a": kt(0.5, 0.6, 0.7), "b": kt(0.5, 0.6, 0.7), "c": kt(0.5, 0.6, 0.7)}}
    assert worst_target(suits_most) == pytest.approx(0.2)  # pooled it would be 0.667, above the even agent's
    assert worst_target(even) == pytest.approx(0.6)


def test_random_llama_names_pick_a_member_of_the_family():
    """``random-llama:seed=…,init=…`` loads the same model as ``random_llama`` with those arguments, and
    plain ``random-llama`` the paper-like one (seed 0, init 0.1)."""
    from rsd_rerank.targets import load_target, random_llama, weights_fingerprint

    named = load_target("random-llama:seed=3,init=0.05,hidden=64,layers=1", device="cpu", dtype="float32")
    built = random_llama(seed=3, initializer_range=0.05, hidden_size=64, num_hidden_layers=1)
    assert named.name == built.name == "random-llama(seed=3,init=0.05,h=64,L=1)"
    assert weights_fingerprint(named.model) == weights_fingerprint(built.model)
    assert load_target("random-llama", device="cpu", dtype="float32").name == "random-llama(seed=0,init=0.1,h=256,L=4)"
