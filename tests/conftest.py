"""Shared fixtures: the embedded SmolLM2, a tiny random-weight Llama, and the example requests."""

import json
from pathlib import Path

import pytest

from rsd_rerank.targets import load_target, random_llama

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
