"""Ray scale-out on a local cluster: --workers 2 writes what --workers 1 writes, the training cache is
the same, and a killed actor or a driver killed with kill -9 ends in the same output."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsd_rerank.cli import main
from rsd_rerank.integrations.scale import ScaleConfig, Workers, ray_cluster
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, WindowConfig, read_requests
from rsd_rerank.targets import TargetConfig, random_llama
from rsd_rerank.training.cache import cached_queries

INDEX = Path(__file__).resolve().parent.parent / "indexes" / "beir-scifact"
TARGET = TargetConfig("random-llama", device="cpu", dtype="float32")
GSD2 = [
    "--model",
    "random-llama",
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--method",
    "gsd",
    "--budget",
    "2",
    "--max-passage-words",
    "30",
]
# float32 spelt out: Ray workers are other processes, where --dtype auto would pick bf16 on a CPU with AMX
# (the tests pin auto to float32 only in this process)


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory, requests_json):
    """Six requests of 12 candidates (the examples' passages under six qids)."""
    records = []
    for i in range(6):
        source = requests_json[i % 2]
        records.append(
            {
                "query": {"qid": f"q{i}", "text": source["query"]["text"]},
                "candidates": source["candidates"][i : i + 12],
            }
        )
    path = tmp_path_factory.mktemp("scale") / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rerank(requests, out, *extra):
    return main(["rerank", *GSD2, "--batch-size", "2", "--requests", str(requests), "--output", str(out), *extra])


def test_two_workers_write_the_run_of_one(requests_file, tmp_path):
    one, two = tmp_path / "one.trec", tmp_path / "two.trec"
    assert _rerank(requests_file, one) == 0
    assert _rerank(requests_file, two, "--workers", "2") == 0
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == 72


@pytest.mark.skipif(not INDEX.is_dir(), reason="needs indexes/beir-scifact (bash scripts/setup.sh)")
def test_pipeline_with_two_workers_writes_the_run_of_one(tmp_path):
    def pipeline(out, *extra):
        argv = ["pipeline", *GSD2, "--index", str(INDEX), "--dataset", "beir/scifact/test", "--queries", "3"]
        return main([*argv, "--hits", "20", "--rerank-top", "12", "--output", str(out), *extra])

    one, two = tmp_path / "one.trec", tmp_path / "two.trec"
    assert pipeline(one) == 0 and pipeline(two, "--workers", "2") == 0
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == 60


def test_the_target_cache_built_by_workers_is_the_one_process_cache(requests_file, tmp_path):
    requests = read_requests(requests_file)
    prompt, batching = PromptConfig(max_passage_words=30), BatchConfig(2)
    with ray_cluster(ScaleConfig(2)):
        Workers(TARGET, ScaleConfig(2)).cache(requests, prompt, 3, batching, str(tmp_path / "workers"))
    cached_queries(random_llama(), requests, prompt, 3, tmp_path / "alone", batching)
    files = {p.relative_to(tmp_path / "workers"): p for p in (tmp_path / "workers").rglob("*.safetensors")}
    alone = {p.relative_to(tmp_path / "alone"): p for p in (tmp_path / "alone").rglob("*.safetensors")}
    assert len(files) == 6 and files.keys() == alone.keys()
    from safetensors.torch import load_file

    for name, path in files.items():
        a, b = load_file(str(path)), load_file(str(alone[name]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_actor_is_restarted_and_its_chunk_retried(requests_file, tmp_path):
    requests = read_requests(requests_file)
    settings = (DecodingConfig("gsd", 2), PromptConfig(max_passage_words=30), BatchConfig(1), WindowConfig())
    with ray_cluster(ScaleConfig(2)):
        chunks = Workers(TARGET, ScaleConfig(2)).chunks("rerank", [[r] for r in requests], *settings)
        first = next(chunks)
        # The actor that gave chunk 0 has taken another chunk by now: it dies in the middle of it.
        os.kill(first.pid, signal.SIGKILL)
        results = [first, *chunks]
    assert [c.index for c in results] == list(range(6))
    alone = [r for batch in _windowed(requests, settings) for r in batch]
    assert [r.docids for c in results for r in c.result] == [r.docids for r in alone]


def _windowed(requests, settings):
    from rsd_rerank.integrations.rank_llm import rerank_windowed

    return rerank_windowed(random_llama(), requests, *settings)


def test_a_driver_killed_with_kill_9_resumes_to_the_same_bytes(requests_file, tmp_path):
    whole = tmp_path / "whole.trec"
    assert _rerank(requests_file, whole) == 0
    out = tmp_path / "out.trec"
    argv = ["rerank", *GSD2, "--batch-size", "1", "--requests", str(requests_file), "--output", str(out)]
    # The driver kills itself and the local cluster it started (its process group) with SIGKILL right
    # after its first write of the run: a kill mid-run that no machine's speed can outrun.
    killer = (
        "import os, signal, sys\n"
        "import rsd_rerank.runs as runs\n"
        "write = runs.atomic_write\n"
        "def write_then_die(path, text):\n"
        "    write(path, text)\n"
        "    os.killpg(0, signal.SIGKILL)\n"
        "runs.atomic_write = write_then_die\n"
        "from rsd_rerank.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", killer, *argv, "--workers", "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert driver.wait(timeout=300) == -signal.SIGKILL
    partial = out.read_text().splitlines()
    assert 0 < len(partial) < 72  # killed mid-run, every write whole
    assert _rerank(requests_file, out, "--workers", "2", "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()
