"""What numeric identifiers cost: tokens fed and seconds per verification pass, letters vs numbers.

    .venv/bin/python benchmarks/identifiers.py                 # embedded SmolLM2, CPU, 5 requests, K = 20
    .venv/bin/python benchmarks/identifiers.py --model random-llama --out benchmarks/results/identifiers-random-llama

RankZephyr's template numbers passages ``[1]`` … ``[K]``; with a tokenizer that splits digits
(SmolLM2's) an identifier is two or three tokens with its bracket, and a slot's distribution needs
every item's whole piece: the session feeds one branch token per inner trie node per slot (tree
mask). Per request this script times, on one session per scheme: a full verification pass (from
slot 0, a random ranking), a tail pass (sharing the first K/2 slots), the greedy target (K-1 steps)
and GSD@5; it records the tokens each pass fed. JSON and Markdown go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.prompt import DEFAULT_TEMPLATE, NUMERIC_TEMPLATE, PromptConfig, request_prompt
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def measure(target, requests, template: str, words: int) -> dict:
    out: dict[str, list[float]] = {"full_s": [], "tail_s": [], "greedy_s": [], "gsd5_s": []}
    tokens: dict[str, list[int]] = {"full": [], "tail": []}
    generator = torch.Generator().manual_seed(0)
    config = PromptConfig(template=template, max_passage_words=words)
    for request in requests:
        prompt = request_prompt(target.tokenizer, request, config, target.max_positions)
        session = TargetSession.from_prompt(target, prompt)
        k = session.k
        first = torch.randperm(k, generator=generator).tolist()
        second = first[: k // 2] + list(reversed(first[k // 2 :]))
        for name, ranking in (("full", first), ("tail", second)):
            start = session.clock()
            session.verify(ranking)
            out[f"{name}_s"].append(session.clock() - start)
            tokens[name].append(session.fed_tokens[-1])
        session.forget()
        start = session.clock()
        session.greedy_ranking()
        out["greedy_s"].append(session.clock() - start)
        session.forget()
        out["gsd5_s"].append(rank(session, DecodingConfig("gsd", 5)).trace.decode_seconds)
    return {
        "template": template,
        "single_token": prompt.layout.single_token,
        "tokens_per_full_pass": statistics.median(tokens["full"]),
        "tokens_per_tail_pass": statistics.median(tokens["tail"]),
        **{name: statistics.median(values) for name, values in out.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="target (default: the embedded SmolLM2)")
    parser.add_argument("--requests", default=str(ROOT / "examples" / "requests.jsonl"))
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--max-passage-words", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "identifiers-smollm2-cpu"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    target = load_target(args.model, device="cpu", dtype="float32")
    requests = read_requests(args.requests)
    requests = (requests * args.queries)[: args.queries]
    rows = [measure(target, requests, t, args.max_passage_words) for t in (DEFAULT_TEMPLATE, NUMERIC_TEMPLATE)]
    meta = {
        "target": target.name,
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), float32",
        "requests": len(requests),
        "k": 20,
        "max_passage_words": args.max_passage_words,
    }
    out = Path(args.out)
    atomic_write(stem_file(out, ".json"), json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# Identifier schemes on {meta['target']}, {meta['device']}, {meta['requests']} requests, K = 20 (medians)",
        "",
        "| template | identifiers | tokens / full pass | tokens / tail pass | full pass s | tail pass s | greedy (K-1 steps) s | GSD@5 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = "one token each" if r["single_token"] else "several tokens (tree-masked branches)"
        lines.append(
            f"| {r['template']} | {kind} | {r['tokens_per_full_pass']:.0f} | {r['tokens_per_tail_pass']:.0f} | "
            f"{r['full_s']:.3f} | {r['tail_s']:.3f} | {r['greedy_s']:.3f} | {r['gsd5_s']:.3f} |"
        )
    atomic_write(stem_file(out, ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
