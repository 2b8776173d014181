"""The batched engine: Q prompts of different lengths and K in one session give what Q sessions give."""

import random

import pytest
import torch

from rsd_rerank.decoding import decode, decode_many
from rsd_rerank.methods import METHODS, TRAINED_BASELINES, DecodingConfig, rank_many
from rsd_rerank.prompt import PromptConfig, build_prompt
from rsd_rerank.proposers import ConsensusProposer, GSDProposer
from rsd_rerank.runs import BatchConfig, batches, read_requests
from rsd_rerank.session import TargetSession

TARGET_ONLY = [m for m in METHODS if m not in TRAINED_BASELINES]  # no companion to train for the full targets
CORE = ("greedy", "std", "gsd", "consensus", "rsd")  # the baselines' batching: mixed prompts, every method

TOL = 1e-4
WORDS = "ocean tide vitamin bone protein cell gene light salt storm reef fish virus lung heart brain".split()


def _prompts(target, sizes, seed=0):
    """Prompts with K = each of ``sizes`` and passages of random lengths (so prompt lengths differ)."""
    rng = random.Random(seed)
    out = []
    for k in sizes:
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25))) for _ in range(k)]
        out.append(build_prompt(target.tokenizer, " ".join(rng.sample(WORDS, 3)), docs))
    return out


@pytest.fixture(scope="module")
def mixed(tiny_llama):
    prompts = _prompts(tiny_llama, [20, 7, 13, 2, 26])
    assert len({len(p.token_ids) for p in prompts}) == len(prompts)  # every prompt length differs
    return prompts


def test_a_batch_gives_each_query_what_its_own_session_gives(tiny_llama, mixed):
    batch = TargetSession.from_prompts(tiny_llama, mixed)
    singles = [TargetSession.from_prompt(tiny_llama, p) for p in mixed]
    greedy = batch.greedy_rankings()
    g = torch.Generator().manual_seed(0)
    rankings = {q: torch.stack([torch.randperm(s.k, generator=g) for _ in range(3)]) for q, s in enumerate(singles)}
    verified = batch.verify_many(rankings)
    for q, single in enumerate(singles):
        assert greedy[q] == single.greedy_ranking()
        assert (batch.first_slot(q) - single.first_slot()).abs().max() <= TOL
        one = single.verify(rankings[q])
        assert (verified[q].matrices - one.matrices).abs().max() <= TOL
        assert torch.equal(verified[q].accepted, one.accepted)
        _, reference = single.stepwise_rows(rankings[q][0].tolist())
        assert (verified[q].matrices[0] - reference).abs().max() <= TOL
    assert batch.passes == 1 + (26 - 1)  # one verification for all, one greedy step per slot of the longest


def test_theorem_1_inside_a_batch_and_early_leavers(tiny_llama, mixed):
    session = TargetSession.from_prompts(tiny_llama, mixed)
    greedy = session.greedy_rankings()
    session.forget()
    before = session.passes
    decoded = decode_many(session, dict.fromkeys(range(len(mixed)), GSDProposer()), budget=max(session.ks))
    rounds = []
    for q, d in decoded.items():
        assert d.ranking == greedy[q]
        accepted = d.trace.accepted_of()
        assert accepted[-1] == session.ks[q] and all(b > a for a, b in zip(accepted, accepted[1:], strict=False))
        assert d.trace.passes == len(accepted)
        rounds.append(len(accepted))
    assert session.passes - before == max(rounds)  # one forward a round for the whole batch
    assert len(set(rounds)) > 1  # queries finish at different rounds …
    sequences = session.fed_sequences[-max(rounds) :]
    assert sequences[0] == len(mixed) and sequences[-1] < len(mixed)  # … and leave the batch
    assert sequences == sorted(sequences, reverse=True)


def test_batched_trajectories_of_several_queries(tiny_llama, mixed):
    session = TargetSession.from_prompts(tiny_llama, mixed[:3])
    many = decode_many(session, dict.fromkeys(range(3), ConsensusProposer()), budget=3, trajectories=4)
    for q in range(3):
        alone = decode(TargetSession.from_prompt(tiny_llama, mixed[q]), ConsensusProposer(), budget=3)
        assert all(row == alone.ranking for row in many[q].rankings.tolist())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_batched_equals_one_at_a_time(tiny_llama, mixed, companions, method):
    config = DecodingConfig(method, 3, agent="random-llama" if method == "rsd" else None, ranker=companions.get(method))
    batch = rank_many(TargetSession.from_prompts(tiny_llama, mixed), config)
    for q, prompt in enumerate(mixed):
        alone = rank_many(TargetSession.from_prompt(tiny_llama, prompt), config)[0]
        assert batch[q].ranking == alone.ranking, (method, q)


def test_batches_respect_size_and_token_cap():
    lengths = [100, 300, 200, 50, 50, 900, 10]
    assert batches(lengths, BatchConfig(3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches(lengths, BatchConfig(8, max_batch_tokens=600)) == [[0, 1], [2, 3, 4], [5], [6]]
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        BatchConfig(0)


def _scifact_requests(k: int, n: int = 50):
    """The first ``n`` SciFact test claims with their BM25 top ``k`` (the index set-up builds)."""
    from pathlib import Path

    from dacite import from_dict
    from rank_llm.data import Request

    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import bm25, request_dicts

    index = Path(__file__).resolve().parent.parent / "indexes" / "beir-scifact"
    if not index.is_dir():
        pytest.fail(f"{index} is missing: run scripts/setup.sh")
    topics = dict(list(datasets.queries("beir/scifact/test").items())[:n])
    runs = bm25(index, topics, k)
    return [from_dict(data_class=Request, data=r) for r in request_dicts(index, runs, topics, k)]


@pytest.mark.parametrize(
    ("target", "k", "words", "n"),
    # SmolLM2: short lists and passages, and 16 requests (two full batches of 8) for CPU time: the
    # paths are the random Llama's, which runs all 50
    [("random_llama", 20, 30, 50), ("smollm2", 6, 10, 16)],
)
def test_scifact_requests_batched_equal_one_at_a_time(request, target, k, words, n):
    from rsd_rerank.targets import random_llama

    model = random_llama() if target == "random_llama" else request.getfixturevalue("smollm2")
    requests = _scifact_requests(k, n)
    assert len(requests) == n
    config = PromptConfig(max_passage_words=words)
    prompts = [build_prompt(model.tokenizer, r.query.text, [c.doc for c in r.candidates], config) for r in requests]
    rankings = {}
    for size in (1, 8):
        # One session per batch serves every method (forget() between), as compare does.
        for group in batches([len(p.token_ids) for p in prompts], BatchConfig(size)):
            session = TargetSession.from_prompts(model, [prompts[i] for i in group])
            for method in CORE:
                session.forget()
                decoded = rank_many(session, DecodingConfig(method, 5))
                for q, i in enumerate(group):
                    rankings[size, method, i] = decoded[q].ranking
    for method in CORE:
        for i in range(len(requests)):
            assert rankings[8, method, i] == rankings[1, method, i], (method, i)


def test_rerank_cli_batch_8_writes_the_batch_1_run(tmp_path, requests_json):
    import json

    from rsd_rerank.cli import main

    path = tmp_path / "r.jsonl"
    short = [
        {**r, "query": {**r["query"], "qid": f"{r['query']['qid']}-{n}"}, "candidates": r["candidates"][: 20 - 6 * n]}
        for n in range(3)
        for r in requests_json
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in short))
    for method in TARGET_ONLY:
        runs = []
        for size in ("1", "8"):
            out = tmp_path / f"{method}.{size}.trec"
            args = ["rerank", "--requests", str(path), "--output", str(out), "--method", method, "--batch-size", size]
            assert main([*args, "--model", "random-llama", "--max-passage-words", "40"]) == 0
            runs.append(out.read_text())
        assert runs[0] == runs[1], method
    assert len(read_requests(path)) == 6


def test_bfloat16_on_the_cpu_is_exact_in_its_own_terms(query_docs):
    """In bf16 a verification row and the incremental decode step's row differ by rounding, so near-ties
    may break differently. What stays exact: at T >= K the loop ends on a ranking its own verification
    accepts in full, i* grows every round (Theorem 1), and rows stay within bf16 rounding of the steps'."""
    from rsd_rerank.targets import random_llama

    target = random_llama(dtype="bfloat16")
    assert target.model.dtype == torch.bfloat16
    for query, docs in query_docs:
        session = TargetSession(target, query, docs)
        decoded = decode(session, GSDProposer(), budget=session.k)
        accepted = decoded.trace.accepted_of()
        assert accepted[-1] == session.k and all(b > a for a, b in zip(accepted, accepted[1:], strict=False))
        assert session.verify(decoded.ranking).accepted.item() == session.k
        _, reference = session.stepwise_rows(decoded.ranking)
        assert (session.verify(decoded.ranking).matrices[0] - reference).abs().max() < 0.25


def test_device_and_dtype_errors_name_the_option_and_touch_nothing(tmp_path, requests_json, capsys):
    import json

    from rsd_rerank.cli import main

    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    out = tmp_path / "run.trec"
    previous = "other Q0 d1 1 1 rsd-rerank.rsd-drafts5\n"
    out.write_text(previous)
    base = ["rerank", "--model", "random-llama", "--requests", str(requests), "--output", str(out), "--resume"]
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert main([*base, "--device", "tpu"]) == 2
    assert "--device 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a choice
        main([*base, "--dtype", "float64"])
    assert out.read_text() == previous


def test_out_of_memory_is_one_line_naming_the_batch_options(tmp_path, requests_json, capsys, monkeypatch):
    import json

    from rsd_rerank.cli import main
    from rsd_rerank.targets import Target

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    real = Target.__init__

    def patched(self, model, tokenizer, name):
        real(self, model, tokenizer, name)
        monkeypatch.setattr(model, "forward", oom)

    monkeypatch.setattr(Target, "__init__", patched)
    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    args = ["rerank", "--model", "random-llama", "--requests", str(requests), "--output", str(tmp_path / "o")]
    assert main([*args, "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]  # one line (beside the progress bar)
    assert "out of memory" in line and "--batch-size or --max-batch-tokens" in line and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cpu_bfloat16_produces_a_run(tmp_path, requests_json):
    import json

    from rsd_rerank.cli import main

    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    out = tmp_path / "bf16.trec"
    args = ["rerank", "--model", "random-llama", "--device", "cpu", "--dtype", "bfloat16", "--batch-size", "2"]
    assert main([*args, "--requests", str(requests), "--output", str(out)]) == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    assert len(lines) == 40 and {line[5] for line in lines} == {"rsd-rerank.rsd-drafts5"}


@pytest.mark.parametrize(
    ("flags", "chosen"),
    [
        ("fpu sse2 avx2 avx512f", torch.float32),
        ("fpu avx512f avx512_bf16", torch.bfloat16),
        ("fpu amx_bf16 amx_tile", torch.bfloat16),
    ],
)
def test_auto_dtype_follows_the_cpu(tmp_path, monkeypatch, caplog, flags, chosen):
    """``--dtype auto`` on the CPU: bfloat16 where /proc/cpuinfo names bf16 matrix instructions (AMX or
    AVX-512 BF16), float32 elsewhere or where cpuinfo cannot be read; the choice is logged with its reason."""
    import logging

    import rsd_rerank.targets as targets

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n")
    monkeypatch.setattr(targets, "CPUINFO", cpuinfo)
    with caplog.at_level(logging.INFO, logger="rsd_rerank.targets"):
        target = targets.load_target("random-llama", device="cpu", dtype="auto")
    assert target.model.dtype == chosen
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--dtype auto")]
    assert str(chosen).removeprefix("torch.") in line and ("none of" in line) == (chosen == torch.float32)
    assert targets.load_target("random-llama", device="cpu", dtype="float32").model.dtype == torch.float32
    monkeypatch.setattr(targets, "CPUINFO", tmp_path / "missing")
    assert targets.auto_dtype(torch.device("cpu"))[0] == "float32"
