"""Theorem 1 and batching in the precision a target runs in: at T >= K, does every budgeted method write
the greedy ranking, and does the greedy ranking depend on the batch size? Both pass kinds are measured on
the same prompts: the default passes (tail fed after the held prefix, queries batched) and batch-invariant
passes (``--batch-invariant``: each ranking fed whole and alone, in a forward of one shape per query).

    .venv/bin/python benchmarks/exactness.py --model random-llama --dtype bfloat16 \\
        --template rank_zephyr_template.yaml --requests data/scifact/test.top20.jsonl --queries 20 \\
        --out benchmarks/results/exactness-random-llama-numbers-bf16

Writes ``<out>.json`` (every ranking) and ``<out>.md``: per pass kind, how many queries each method
writes another ranking than greedy on, and how many greedy rankings differ between batch sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rsd_rerank.files import atomic_write
from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.prompt import PromptConfig, request_prompts
from rsd_rerank.runs import BatchConfig, read_requests
from rsd_rerank.session import batched_sessions
from rsd_rerank.targets import load_target

METHODS = ("gsd", "consensus", "rsd", "pdm")


def rankings(target, prompts, batching: BatchConfig, method: str, budget: int) -> list[list[int]]:
    """Every prompt's ranking by ``method`` at ``budget``, sessions of ``batching``'s size."""
    out: list[list[int]] = [[] for _ in prompts]
    for group, session in batched_sessions(target, prompts, batching):
        decoded = rank_many(session, DecodingConfig(method=method, budget=budget))
        for q, i in enumerate(group):
            out[i] = decoded[q].rankings[0].tolist()
    return out


def measure(args: argparse.Namespace) -> dict:
    target = load_target(args.model, device="cpu", dtype=args.dtype)
    requests = read_requests(args.requests)[: args.queries]
    prompt = PromptConfig(template=args.template, max_passage_words=args.max_passage_words)
    prompts = request_prompts(target.tokenizer, requests, prompt, target.max_positions)
    out = {
        "model": args.model,
        "dtype": args.dtype,
        "template": args.template,
        "queries": len(prompts),
        "max_passage_words": args.max_passage_words,
        "budget": args.budget,
        "batch_size": args.batch_size,
        "kinds": {},
    }
    for invariant in (False, True):
        kind = "batch-invariant" if invariant else "default"
        start = time.perf_counter()
        greedy = rankings(target, prompts, BatchConfig(1, None, invariant), "greedy", 0)
        batched = rankings(target, prompts, BatchConfig(args.batch_size, None, invariant), "greedy", 0)
        methods = {m: rankings(target, prompts, BatchConfig(1, None, invariant), m, args.budget) for m in METHODS}
        out["kinds"][kind] = {
            "greedy": greedy,
            "greedy_batched": batched,
            "batch_differs": sum(a != b for a, b in zip(greedy, batched, strict=True)),
            "differs": {m: sum(a != b for a, b in zip(r, greedy, strict=True)) for m, r in methods.items()},
            "rankings": methods,
            "seconds": time.perf_counter() - start,
        }
        print(kind, json.dumps({k: v for k, v in out["kinds"][kind].items() if k in ("batch_differs", "differs")}))
    return out


def markdown(result: dict) -> str:
    n = result["queries"]
    lines = [
        f"# Exactness in {result['dtype']}: {result['model']}, {result['template']}, {n} queries",
        "",
        f"Queries (of {n}) whose ranking differs from greedy's at --budget {result['budget']} (batch 1), and "
        f"whose greedy ranking differs between --batch-size 1 and {result['batch_size']}. CPU, "
        f"{result['max_passage_words']}-word passages.",
        "",
        "| passes | " + " | ".join(METHODS) + f" | greedy, batch {result['batch_size']} vs 1 |",
        "|---|" + "---|" * (len(METHODS) + 1),
    ]
    for kind, r in result["kinds"].items():
        cells = [str(r["differs"][m]) for m in METHODS] + [str(r["batch_differs"])]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Wall seconds of each kind are in the JSON; they are no speed comparison unless the CPU was otherwise idle.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-llama")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--template", default="rank_zephyr_template.yaml")
    p.add_argument("--requests", required=True)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--max-passage-words", type=int, default=30)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--out", required=True, help="output stem: writes .json and .md")
    args = p.parse_args(argv)
    result = measure(args)
    atomic_write(f"{args.out}.json", json.dumps(result) + "\n")
    atomic_write(f"{args.out}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
