"""The paper's baselines: the tree-masked pass reads what ``verify`` reads, the lossless methods (SDM,
Blockwise, Medusa, PDM, FIRST + SD) reach the target at T ≥ K, Medusa feeds its [1, 3, 3, 3] tree in
one pass, an interrupted LoRA fine-tune resumes to the same adapter, and a missing or foreign
companion (heads, fine-tuned ranker) is a clear error."""

import json
import random

import pytest
import torch

from rsd_rerank.cli import main
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.prompt import NUMERIC_TEMPLATE, PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import random_llama
from rsd_rerank.training.baselines import FinetuneConfig, finetune

LOSSLESS = ("sdm", "pdm", "blockwise", "medusa", "first-sd")


def _request(rng: random.Random, k: int) -> tuple[str, list[str]]:
    words = "ocean tide vitamin bone protein cell gene light salt storm reef fish virus lung heart brain".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(k)]
    return " ".join(rng.choice(words) for _ in range(4)), docs


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_tree_pass_reads_the_rows_verify_reads(tiny_llama):
    rng = random.Random(1)
    query, docs = _request(rng, 9)
    session, reference = TargetSession(tiny_llama, query, docs), TargetSession(tiny_llama, query, docs)
    sigma = rng.sample(range(9), 9)
    rows = reference.verify(sigma).matrices[0]
    chain = session.expand(sigma[:1], [tuple(sigma[1:j]) for j in range(2, 9)])  # a chain is a tree
    _close(chain.prefix_row, rows[1])
    _close(chain.rows, rows[2:9])
    # Siblings and their children, after a prefix the cache now holds: each node sees its own path only.
    prefix = sigma[:2]
    others = [i for i in range(9) if i not in prefix]
    paths = [(a,) for a in others[:3]] + [(a, others[4]) for a in others[:3]]
    tree = session.expand(prefix, paths)
    assert session.fed_tokens[-1] == (1 + len(paths)) * session._step  # prefix[:1] came from the cache
    for path, row in zip(paths, tree.rows, strict=True):
        placed = prefix + list(path)
        ranking = placed + [i for i in range(9) if i not in placed]
        _close(row, reference.verify(ranking).matrices[0][len(placed)])
    # The accepted path is the deepest greedy one, and the cache then holds it: the next pass feeds only what is new.
    greedy = reference.stepwise_rows(prefix + [i for i in range(9) if i not in prefix])[1]
    best = int(greedy[2].masked_fill(torch.isin(torch.arange(9), torch.tensor(prefix)), float("-inf")).argmax())
    assert tree.accepted[:1] == ((best,) if best in others[:3] else ())
    nxt = [i for i in range(9) if i not in prefix + list(tree.accepted)][:1]
    after = session.expand(prefix + list(tree.accepted) + nxt, [])
    assert session.fed_tokens[-1] == session._step
    placed = prefix + list(tree.accepted) + nxt
    _close(
        after.prefix_row, reference.verify(placed + [i for i in range(9) if i not in placed]).matrices[0][len(placed)]
    )


@pytest.mark.parametrize("k", [2, 3, 11])
def test_the_lossless_baselines_reach_the_target_at_t_ge_k(tiny_llama, companions, k):
    rng = random.Random(k)
    session = TargetSession(tiny_llama, *_request(rng, k))
    greedy = session.greedy_ranking()
    for method in LOSSLESS:
        for budget in (1, 2, k):
            session.forget()
            decoded = rank(session, DecodingConfig(method, budget, ranker=companions[method]))
            assert sorted(decoded.ranking) == list(range(k)), (method, budget)
            assert decoded.trace.passes <= budget, (method, budget)
            if budget >= k:
                assert decoded.ranking == greedy, (method, k)


def test_the_baselines_are_not_the_target_on_a_short_budget(tiny_llama, companions, query_docs):
    """On a hard 20-item list one pass leaves each lossless method short of the target (the exactness
    test above would otherwise be vacuous), and the fine-tuned rankers use no pass."""
    session = TargetSession(tiny_llama, *query_docs[0], PromptConfig(max_passage_words=20))
    greedy = session.greedy_ranking()
    for method in (*LOSSLESS, "first-ft", "rankzephyr-ft"):
        session.forget()
        decoded = rank(session, DecodingConfig(method, 1, ranker=companions.get(method)))
        assert decoded.ranking != greedy, method
        assert decoded.trace.passes == (0 if method.endswith("-ft") else 1), method


def test_medusa_feeds_its_1_3_3_3_tree_in_one_pass(tiny_llama, companions, query_docs):
    session = TargetSession(tiny_llama, *query_docs[0], PromptConfig(max_passage_words=20))
    rank(session, DecodingConfig("medusa", 1, ranker=companions["medusa"]))
    assert session.fed_tokens == [(1 + 3 + 9 + 27) * session._step]  # the bonus, then 3, 9 and 27 nodes
    session.forget()
    rank(session, DecodingConfig("blockwise", 1, ranker=companions["blockwise"]))
    # The bonus, then the first head's 5 best items, each continued through the other 10 heads.
    assert session.fed_tokens[1:] == [(1 + 5 * 11) * session._step]


def test_a_missing_or_foreign_companion_is_a_clear_error(tiny_llama, companions, query_docs, tmp_path):
    session = TargetSession(tiny_llama, *query_docs[0], PromptConfig(max_passage_words=20))
    for method in ("blockwise", "medusa", "first-ft", "rankzephyr-ft", "first-sd"):
        with pytest.raises(ValueError, match=f"{method} needs trained .*rsd-rerank finetune --method"):
            rank(session, DecodingConfig(method, 3, ranker=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="holds 'medusa', not what blockwise needs"):
        rank(session, DecodingConfig("blockwise", 3, ranker=companions["medusa"]))
    with pytest.raises(ValueError, match="holds 'rankzephyr-ft', not what first-sd needs"):
        rank(session, DecodingConfig("first-sd", 3, ranker=companions["rankzephyr-ft"]))
    other = random_llama(
        seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    foreign = TargetSession(other, *query_docs[0], PromptConfig(max_passage_words=20))
    with pytest.raises(ValueError, match="was trained on .*not on this target"):
        rank(foreign, DecodingConfig("medusa", 3, ranker=companions["medusa"]))
    with pytest.raises(ValueError, match="unknown target 'no-such-drafter'"):
        rank(session, DecodingConfig("sdm", 3, ranker="no-such-drafter"))
    with pytest.raises(ValueError, match="--ranker is for"):
        DecodingConfig("gsd", 3, ranker=companions["medusa"])
    numeric = TargetSession(tiny_llama, *query_docs[0], PromptConfig(NUMERIC_TEMPLATE, max_passage_words=20))
    with pytest.raises(ValueError, match="single-token identifiers"):
        rank(numeric, DecodingConfig("medusa", 3, ranker=companions["medusa"]))


def test_the_cli_refuses_a_missing_companion_with_exit_2(train_requests, tmp_path, capsys):
    out = tmp_path / "run.trec"
    argv = ["rerank", "--model", "random-llama", "--device", "cpu", "--method", "medusa", "--max-passage-words", "20"]
    code = main([*argv, "--ranker", str(tmp_path / "none"), "--requests", str(train_requests), "--output", str(out)])
    assert code == 2 and not out.exists()
    assert "rsd-rerank finetune --method medusa --model random-llama" in capsys.readouterr().err


def test_finetune_makes_heads_through_the_cli_and_keeps_a_finished_one(train_requests, tmp_path):
    out = tmp_path / "medusa"
    argv = ["finetune", "--model", "random-llama", "--device", "cpu", "--method", "medusa", "--max-passage-words", "20"]
    argv += ["--requests", str(train_requests), "--out", str(out), "--epochs", "1"]
    assert main(argv) == 0
    meta = json.loads((out / "heads.json").read_text())
    assert meta["method"] == "medusa" and meta["heads"] == 3 and meta["queries"] == 3
    assert main(argv) == 2  # a finished one is kept
    assert main([*argv, "--overwrite"]) == 0


# ``reranker`` as scripts/train_reranker.sh makes smollm2-reranker (bf16 autocast, snapshots, ListMLE, the fusion
# teacher, short and easy lists first, a learning curve), on the top layer only.
RERANKER_RUN = {
    "lora_layers": 1,
    "bf16_autocast": True,
    "snapshot_every": 2,
    "loss": "listmle",
    "teacher": "fusion",
    "list_sizes": "5,8",
    "foreign": "2,0",
    "validate_every": 3,
}


@pytest.mark.parametrize(
    "method, extra, dies_at, curve_steps",
    [
        ("first-ft", {}, 4, None),
        ("reranker", RERANKER_RUN, 4, [3, 6]),
        # Two examples an Adam step, and the claim as a cue in epoch 1: validations where a step crosses 3 and 6.
        ("reranker", {**RERANKER_RUN, "accumulate": 2, "cue": "1,0"}, 2, [4, 6]),
    ],
)
def test_an_interrupted_lora_fine_tune_resumes_to_the_same_adapter(
    tiny_llama, train_requests, tmp_path, monkeypatch, method, extra, dies_at, curve_steps
):
    from safetensors.torch import load_file

    requests = read_requests(train_requests)
    prompt = PromptConfig(max_passage_words=20)
    config = FinetuneConfig(method, epochs=2, save_every=1, **extra)
    validation = requests[:2] if method == "reranker" else None
    finetune(tiny_llama, requests, config, tmp_path / "whole", prompt, validation=validation)
    step, calls = torch.optim.Adam.step, []

    def dies(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == dies_at:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(torch.optim.Adam, "step", dies)
        with pytest.raises(KeyboardInterrupt):
            finetune(tiny_llama, requests, config, tmp_path / "cut", prompt, validation=validation)
    with pytest.raises(ValueError, match="--resume"):
        finetune(tiny_llama, requests, config, tmp_path / "cut", prompt)
    with pytest.raises(ValueError, match="training queries"):
        finetune(tiny_llama, requests[:2], config, tmp_path / "cut", prompt, resume=True)
    finetune(tiny_llama, requests, config, tmp_path / "cut", prompt, resume=True, validation=validation)
    whole = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    meta = json.loads((tmp_path / "cut" / "ranker.json").read_text())
    assert meta["method"] == method and not (tmp_path / "cut" / "checkpoint.pt").exists()
    if method == "reranker":  # LoRA on the top layer only, and a snapshot every 2 of the 6 steps
        assert {k.split(".layers.")[1].split(".")[0] for k in cut} == {"1"}
        assert sorted(p.name for p in (tmp_path / "cut" / "snapshots").iterdir()) == ["step-2", "step-4", "step-6"]
        # The learning curve: the content figures where the examples done cross 3 and 6, the same after the
        # kill as without it.
        curve = [json.loads(line) for line in (tmp_path / "cut" / "curve.jsonl").read_text().splitlines()]
        assert [row["step"] for row in curve] == curve_steps and curve == meta["curve"]
        assert curve == json.loads((tmp_path / "whole" / "ranker.json").read_text())["curve"]
        assert {"own_first", "shuffle_kt", "letter_kt", "kt_teacher", "kt_request_order"} <= set(curve[0])


def test_compare_runs_every_baseline_with_its_companion(tiny_llama, train_requests, companions, tmp_path):
    from rsd_rerank.integrations.compare import compare, summarise

    methods = ["sdm", "pdm", "blockwise", "medusa", "first-ft", "rankzephyr-ft", "first-sd", "greedy"]
    requests = read_requests(train_requests)
    records = compare(tiny_llama, requests, None, methods, [1, 2], PromptConfig(max_passage_words=20), companions)
    rows = {(r["method"], r["T"]) for r in summarise(records, None)}
    for method in ("sdm", "pdm", "blockwise", "medusa", "first-sd"):
        assert {(method, 1), (method, 2)} <= rows, method
    assert {("first-ft", 0), ("rankzephyr-ft", 0)} <= rows and ("first-ft", 1) not in rows
    # The CLI's --ranker METHOD=DIR must name a method of --methods, before any model is loaded.
    argv = ["compare", "--requests", str(train_requests), "--methods", "medusa", "--out", str(tmp_path / "c")]
    assert main([*argv, "--ranker", "gsd=x"]) == 2 and main([*argv, "--ranker", "medusa"]) == 2


def test_a_ranker_reads_its_teacher_from_the_heads_teacher(tiny_llama, train_requests, tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_RERANK_CACHE", str(tmp_path / "cache"))
    requests, prompt = read_requests(train_requests), PromptConfig(max_passage_words=20)
    finetune(tiny_llama, requests, FinetuneConfig("medusa", epochs=1), tmp_path / "medusa", prompt)
    made = sorted((tmp_path / "cache" / "teacher").iterdir())
    finetune(tiny_llama, requests, FinetuneConfig("rankzephyr-ft", epochs=1), tmp_path / "rz", prompt)
    assert sorted((tmp_path / "cache" / "teacher").iterdir()) == made  # no second greedy decoding


def test_companions_load_once_per_target_and_go_with_it(tiny_llama, companions):
    """A benchmark cycling through every companion of the table loads each once (first-sd shares
    first-ft's ranker), and a target's companions are freed with the target (nothing keeps it alive)."""
    import gc
    import weakref

    from rsd_rerank.companions import _LOADED, load_heads, load_ranker
    from rsd_rerank.targets import Target

    def cycle():
        return [
            load_heads(companions["blockwise"], tiny_llama, "blockwise"),
            load_heads(companions["medusa"], tiny_llama, "medusa"),
            load_ranker(companions["first-ft"], tiny_llama, "first-ft"),
            load_ranker(companions["rankzephyr-ft"], tiny_llama, "rankzephyr-ft"),
            load_ranker(companions["first-sd"], tiny_llama, "first-sd"),
        ]

    first, second = cycle(), cycle()
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert first[2] is first[4]
    copy = Target(type(tiny_llama.model)(tiny_llama.model.config), tiny_llama.tokenizer, tiny_llama.name)
    copy.model.load_state_dict(tiny_llama.model.state_dict())
    load_heads(companions["medusa"], copy, "medusa")
    model = weakref.ref(copy.model)
    assert copy.model in _LOADED
    del copy
    gc.collect()
    assert model() is None  # the cache held the target's model weakly
