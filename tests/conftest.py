"""Shared fixtures: the embedded SmolLM2, a tiny random-weight Llama, the example requests, and the
tiny Llama's baseline companions (heads, fine-tuned rankers) made in seconds."""

import json
from pathlib import Path

import pytest
import torch

from rsd_rerank.companions import MEDUSA_TREE, Heads, save_heads
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.targets import load_target, random_llama
from rsd_rerank.training.baselines import FinetuneConfig, finetune

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session", autouse=True)
def float32_on_the_cpu_and_fresh_prompts(tmp_path_factory):
    """In-process ``--dtype auto`` means float32 on the CPU in every test, as it does on CPUs without bf16
    units: the tests' exact comparisons and recorded rankings are fp32 ones, whatever CPU runs them
    (``test_auto_dtype_follows_the_cpu`` checks the detection itself). In-process prompts are cached in
    a folder of this session's, so no test reads a prompt an older checkout stored."""
    import rsd_rerank.prompt_cache as prompt_cache
    import rsd_rerank.targets as targets

    plain = tmp_path_factory.mktemp("cpu") / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(targets, "CPUINFO", plain)
        patch.setattr(prompt_cache, "ROOT", tmp_path_factory.mktemp("prompts"))
        yield


@pytest.fixture(scope="session")
def smollm2():
    return load_target()


@pytest.fixture(scope="session")
def tiny_llama():
    # init 0.1 makes rankings arbitrary and far from the first-slot order (a hard target in miniature).
    return random_llama(
        seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )


@pytest.fixture(scope="session")
def requests_json():
    return [json.loads(line) for line in (EXAMPLES / "requests.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def query_docs(requests_json):
    """(query, docs) for each example request: K = 20."""
    return [(r["query"]["text"], [c["doc"] for c in r["candidates"]]) for r in requests_json]


@pytest.fixture(scope="session")
def train_requests(tmp_path_factory, requests_json):
    """Three training requests of 12 candidates (the examples' passages under three qids)."""
    records = [
        {
            "query": {"qid": f"t{i}", "text": requests_json[i % 2]["query"]["text"]},
            "candidates": requests_json[i % 2]["candidates"][i : i + 12],
        }
        for i in range(3)
    ]
    path = tmp_path_factory.mktemp("baselines") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def companions(tiny_llama, train_requests, tmp_path_factory):
    """Heads and fine-tuned rankers for the tiny target, made here (seconds): the heads through the CLI."""
    root = tmp_path_factory.mktemp("companions")
    requests = read_requests(train_requests)
    prompt = PromptConfig(max_passage_words=20)
    for method in ("first-ft", "rankzephyr-ft"):
        finetune(tiny_llama, requests, FinetuneConfig(method, epochs=1), root / method, prompt)
    for method in ("blockwise", "medusa"):
        # Random heads draft something other than the target's order (trained ones on 3 queries barely would).
        heads = Heads(tiny_llama.model.config.hidden_size, len(MEDUSA_TREE) if method == "medusa" else 11)
        with torch.no_grad():
            for block in heads.blocks:
                block.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(method)))
        save_heads(root / method, heads, tiny_llama, method, {})
    return {m: str(root / m) for m in ("blockwise", "medusa", "first-ft", "rankzephyr-ft")} | {
        "first-sd": str(root / "first-ft"),
        "sdm": None,
        "pdm": None,
    }
