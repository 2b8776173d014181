"""Latency of each decoding step and method for one target LLM, written as JSON and Markdown.

    .venv/bin/python benchmarks/decode_latency.py                      # embedded SmolLM2, CPU
    .venv/bin/python benchmarks/decode_latency.py --model llama-3.2-3b-random --device cuda --dtype bfloat16
    (benchmarks/throughput.py measures latency and throughput side by side; this script times single steps)

Per request (K = 20 by default) it times: the prompt prefill; one verification pass over a whole
ranking (full) and over a ranking sharing its first K/2 slots with the last verified one (tail
only); the constrained greedy autoregressive ranking (K-1 decode steps, the target); free
token-by-token generation of the ranking string with ``model.generate`` (no constraint, prefill
included, then the prefill median subtracted); STD; GSD@T and consensus@T for T in {1, 3, 5, 7}.
Every method runs on a fresh session so that no method profits from another's cached prefix.
Reported: median and p90 seconds, passes, and Kendall tau to the target ranking.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from throughput import SHAPES, random_shape  # benchmarks/ is on sys.path when a script in it runs

from rsd_rerank.files import atomic_write
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (1, 3, 5, 7)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _stats(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "p90_s": float(np.percentile(values, 90)), "n": len(values)}


def free_generation(session: TargetSession) -> tuple[float, int, bool]:
    """Seconds for free generation to write the ranking's length (prefill included), tokens generated, parse ok."""
    n_tokens = len(session.prompt.layout.tokens(range(session.k)))
    generated = session.generate(max_new_tokens=n_tokens, min_new_tokens=n_tokens)
    found = re.findall(r"\[([A-Z])\]", generated.text)
    return generated.seconds, generated.new_tokens, len(set(found)) == session.k


def run(args: argparse.Namespace) -> dict:
    if args.model in SHAPES:  # a real size with random weights and SmolLM2's tokenizer (benchmarks/throughput.py)
        from transformers import AutoTokenizer

        from rsd_rerank.targets import embedded_model_dir

        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)
        target = random_shape(args.model, tokenizer, args.device, args.dtype)
    else:
        target = load_target(args.model, device=args.device, dtype=args.dtype)
    prompt = PromptConfig(max_passage_words=args.max_passage_words)
    requests = [r for r in read_requests(args.requests) if len(r.candidates) >= args.k][: args.queries]
    if not requests:
        raise ValueError(f"no request in {args.requests} has {args.k} candidates")
    times: dict[str, list[float]] = {}
    passes: dict[str, list[int]] = {}
    kts: dict[str, list[float]] = {}
    e2e: dict[str, list[float]] = {}  # decode plus that session's own prefill
    tokens: list[int] = []
    parse_ok: list[bool] = []
    measuring = False  # warm-up rounds are dropped: first forwards pay one-off allocation and kernel choice

    def record(table: dict, name: str, value) -> None:
        if measuring:
            table.setdefault(name, []).append(value)

    def session_for(request) -> TargetSession:
        s = TargetSession(target, request.query.text, [c.doc for c in request.candidates[: args.k]], prompt)
        record(times, "prefill", s.prefill_seconds)
        return s

    for repeat in range(args.warmup + args.repeats):
        measuring = repeat >= args.warmup
        for request in requests:
            s = session_for(request)
            tokens.append(s.prompt_tokens)
            seconds, target_ranking = _timed(s.greedy_ranking, args.device)
            record(times, "constrained AR ranking (target)", seconds)
            record(e2e, "constrained AR ranking (target)", seconds + s.prefill_seconds)
            k = s.k
            a = list(range(k))
            b = a[: k // 2] + a[k // 2 :][::-1]
            record(times, "verify, full pass", _timed(lambda: s.verify(a[::-1]), args.device)[0])  # noqa: B023
            s.verify(a)
            record(times, "verify, tail only (K/2 shared)", _timed(lambda: s.verify(b), args.device)[0])  # noqa: B023
            seconds, n_tokens, ok = free_generation(s)
            record(times, "free generation (incl. prefill)", seconds)
            parse_ok.append(ok)
            for method, budgets in (("std", (0,)), ("gsd", BUDGETS), ("consensus", BUDGETS)):
                for budget in budgets:
                    name = {"std": "STD", "gsd": f"GSD@{budget}", "consensus": f"consensus@{budget}"}[method]
                    fresh = session_for(request)
                    seconds, decoded = _timed(lambda: rank(fresh, DecodingConfig(method, budget)), args.device)  # noqa: B023
                    record(times, name, seconds)
                    record(e2e, name, seconds + fresh.prefill_seconds)
                    record(passes, name, decoded.trace.passes)
                    tau = kendall_tau(np.array([decoded.ranking]), np.array([target_ranking]))[0]
                    record(kts, name, float(tau))
    rows = []
    for name, values in times.items():
        row = {"step": name, **_stats(values)}
        if name in e2e:
            row["end_to_end_median_s"] = statistics.median(e2e[name])
        if name in passes:
            row["passes"] = statistics.mean(passes[name])
            row["kt_to_target"] = statistics.mean(kts[name])
        rows.append(row)
    prefill = next(r for r in rows if r["step"] == "prefill")["median_s"]
    free = next(r for r in rows if r["step"].startswith("free generation"))
    rows.insert(
        rows.index(free) + 1, {"step": "free generation minus prefill median", "median_s": free["median_s"] - prefill}
    )
    return {
        "model": target.name,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "k": args.k,
        "queries": len(requests),
        "repeats": args.repeats,
        "prompt_tokens_median": statistics.median(tokens),
        "ranking_tokens": n_tokens,
        "free_generation_parsed_all_ids": sum(parse_ok) / len(parse_ok),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    head = (
        f"# Decode latency: {result['model']} on {result['device']} ({result['dtype']}, {result['threads']} threads)\n\n"
        f"K = {result['k']}, {result['queries']} queries × {result['repeats']} repeats, prompt ≈ "
        f"{result['prompt_tokens_median']:.0f} tokens, ranking string {result['ranking_tokens']} tokens. "
        "Seconds are for the step alone; end-to-end adds that run's own prefill (every method runs on a fresh "
        "session). Passes are LLM forwards after the prompt.\n\n"
        "| step | median s | p90 s | end-to-end median s | passes | KT to target |\n|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result["rows"]:
        p90 = f"{r['p90_s']:.3f}" if "p90_s" in r else ""
        passes = f"{r['passes']:.1f}" if "passes" in r else ""
        kt = f"{r['kt_to_target']:.3f}" if "kt_to_target" in r else ""
        total = f"{r['end_to_end_median_s']:.3f}" if "end_to_end_median_s" in r else ""
        lines.append(f"| {r['step']} | {r['median_s']:.3f} | {p90} | {total} | {passes} | {kt} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"as rsd-rerank --model, or one of {', '.join(SHAPES)}")
    p.add_argument("--requests", default=str(ROOT / "examples" / "requests.jsonl"))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-passage-words", type=int, default=PromptConfig.max_passage_words)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for JSON + Markdown")
    args = p.parse_args()
    result = run(args)
    slug = f"decode_latency-{result['model']}-{'cpu' if args.device == 'cpu' else 'cuda'}".replace("/", "_")
    out = Path(args.out)
    atomic_write(out / f"{slug}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / f"{slug}.md", markdown(result))
    print(markdown(result))
    print(f"wrote {out / slug}.json and .md")


if __name__ == "__main__":
    main()
