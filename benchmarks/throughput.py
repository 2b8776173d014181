"""Latency per query and throughput per batch size of every decoder, measured side by side in one run.

Prompts are RankLLM's, built here from real SciFact test claims (BM25 top K, passages cut so that a
prompt is about 2k tokens) and saved with the tokenizer as a *bundle*, so that the GPU run needs
only torch and transformers (the lent GPU machine has neither rank_llm, pyserini nor a network):

    # 1. here: the bundle (RankLLM prompts + SmolLM2's tokenizer), and the CPU run that is committed
    .venv/bin/python benchmarks/throughput.py prepare --out runs/bench --queries 64
    .venv/bin/python benchmarks/throughput.py run --bundle runs/bench --model smollm2 --device cpu --dtype float32 \\
        --queries 8 --batch-sizes 1,4,8 --out benchmarks/results/throughput-smollm2-cpu
    # 2. on a GPU (the device tool: carry runs/bench), random-weight real shapes in bf16
    PYTHONPATH=. python benchmarks/throughput.py run --bundle runs/bench --model llama-3.2-3b-random --device cuda \\
        --dtype bfloat16 --batch-sizes 1,4,16,32,64 --out benchmarks/results/throughput-llama-3.2-3b-cuda
    # the same code paths, on the CPU with a tiny shape (what a GPU session must not have to debug)
    .venv/bin/python benchmarks/throughput.py run --bundle runs/bench --model tiny-random --dry-run

Measured, K = 20:
- Latency at batch 1 (median s per query): prefill; STD; GSD@T, consensus@T, RSD@T (bundled agent);
  the constrained greedy target; RankZephyr-style free generation (its own prefill included).
- Throughput (queries/s, prefill included) at each batch size for rsd@T, gsd@T, greedy, generate
  and first, and the decode phase alone; peak memory (CUDA: max allocated; CPU: max RSS).
- Exactness: how often RSD@K equals the greedy ranking, and the largest difference between a
  verification row and the incremental decode step's row (bf16 rounds them differently).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.prompt import DEFAULT_TEMPLATE, Prompt, RankingLayout
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, load_target, resolve_device, resolve_dtype

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    # Llama-3.2-3B and Mistral-7B-v0.1 shapes (the sizes of RankLLM's rerankers), random weights.
    "llama-3.2-3b-random": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "mistral-7b-random": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    # The dry run's stand-in: every code path of the above, in seconds on a CPU.
    "tiny-random": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=8192, rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
}  # fmt: skip


# -- the bundle -------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> None:
    """RankLLM prompts of SciFact test claims (BM25 top K) and SmolLM2's tokenizer, into ``args.out``."""
    from transformers import AutoTokenizer

    from rsd_rerank.integrations import datasets
    from rsd_rerank.integrations.pyserini import bm25, request_dicts
    from rsd_rerank.prompt import PromptConfig, build_prompt
    from rsd_rerank.targets import embedded_model_dir

    out = Path(args.out)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)
    topics = dict(list(datasets.queries("beir/scifact/test").items())[: args.queries])
    runs = bm25(args.index, topics, args.k)
    config = PromptConfig(template=args.template, max_passage_words=args.words)
    prompts = []
    for r in request_dicts(args.index, runs, topics, args.k):
        if len(r["candidates"]) < args.k:
            continue
        p = build_prompt(tokenizer, r["query"]["text"], [c["doc"] for c in r["candidates"]], config)
        prompts.append({"qid": r["query"]["qid"], "token_ids": p.token_ids, "layout": p.layout.to_json()})
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    tokenizer.save_pretrained(out / "tokenizer")
    atomic_write(out / "prompts.json", json.dumps({"k": args.k, "words": args.words, "prompts": prompts}) + "\n")
    lengths = [len(p["token_ids"]) for p in prompts]
    print(f"wrote {len(prompts)} prompts (median {statistics.median(lengths)} tokens) and the tokenizer to {out}")


def load_bundle(path: Path) -> tuple[object, list[Prompt]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    data = json.loads((path / "prompts.json").read_text())
    prompts = [Prompt([], p["token_ids"], RankingLayout.from_json(p["layout"])) for p in data["prompts"]]
    return tokenizer, prompts


def random_shape(name: str, tokenizer, device: str, dtype: str) -> Target:
    """A random-weight Llama of a real shape, built on the device (nothing is downloaded), seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    where = resolve_device(device)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPES[name],
    )
    torch.manual_seed(0)
    with torch.device(where):
        model = LlamaForCausalLM(config).to(resolve_dtype(dtype, where))
    return Target(model.eval(), tokenizer, name)


# -- measuring --------------------------------------------------------------------------------------


def _peak_memory(device: torch.device) -> float:
    """GiB: CUDA max allocated since the last reset, or the process's max RSS (CPU, monotone)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _agent_for(target: Target) -> str | None:
    """The agent RSD runs with: the bundled one trained on the target or its tokenizer (None picks it),
    else an untrained equivariant agent (the consensus proposer, at the same cost) saved for this run:
    a 7B reranker has its own tokenizer, and timing needs an agent of the real size, not a trained one."""
    from rsd_rerank.agent import Agent, AgentConfig, resolve_agent, save_agent
    from rsd_rerank.targets import tokenizer_fingerprint

    try:
        resolve_agent(None, target, 20)
        return None
    except ValueError:
        directory = Path(tempfile.mkdtemp(prefix="rsd-bench-agent-"))
        meta = {"target": target.name, "tokenizer": tokenizer_fingerprint(target.tokenizer), "untrained": True}
        save_agent(Agent(AgentConfig(), meta), directory)
        return str(directory)


def latency(target: Target, prompts: list[Prompt], budget: int, repeats: int, invariant: bool = False) -> dict:
    """Seconds per query at batch 1 for each decoder, every decoder on the same prefill (``forget`` between)."""
    agent = _agent_for(target)
    methods = {
        "STD": DecodingConfig("std"),
        f"GSD@{budget}": DecodingConfig("gsd", budget),
        f"consensus@{budget}": DecodingConfig("consensus", budget),
        f"RSD@{budget}": DecodingConfig("rsd", budget, agent),
        "constrained greedy (target)": DecodingConfig("greedy"),
    }
    times: dict[str, list[float]] = {"prefill": []}
    passes: dict[str, list[int]] = {}
    kts: dict[str, list[float]] = {}
    exact, row_diff = [], 0.0
    for repeat in range(repeats + 1):  # the first round is a warm-up: allocation, kernel choice
        for prompt in prompts:
            session = TargetSession.from_prompts(target, [prompt], invariant)
            greedy = session.greedy_rankings()[0]
            record = repeat > 0
            if record:
                times["prefill"].append(session.prefill_seconds)
            for name, config in methods.items():
                # greedy: its memo dropped too, so that the target's own K-1 steps are timed
                session.forget(greedy=config.method == "greedy")
                decoded = rank_many(session, config)[0]
                if record:
                    times.setdefault(name, []).append(decoded.trace.decode_seconds)
                    passes.setdefault(name, []).append(decoded.trace.passes)
                    tau = kendall_tau(np.array([decoded.ranking]), np.array([greedy]))[0]
                    kts.setdefault(name, []).append(float(tau))
            generation = session.generate_many()[0]
            if record:
                times.setdefault("free generation (incl. its prefill)", []).append(generation.seconds)
                # Exactness in this dtype: RSD at T = K, and verification rows vs the incremental steps'.
                session.forget()
                full = rank_many(session, DecodingConfig("rsd", session.ks[0], agent))[0]
                exact.append(full.ranking == greedy)
                _, steps = session.stepwise_rows(greedy)
                session.forget()
                verified = session.verify(greedy).matrices[0]
                finite = torch.isfinite(steps)
                row_diff = max(row_diff, float((verified - steps)[finite].abs().max()))
    prefill = statistics.median(times["prefill"])
    rows = []
    for name, values in times.items():
        row = {"step": name, "median_s": statistics.median(values), "p90_s": float(np.percentile(values, 90))}
        if name in passes:
            row["passes"] = statistics.mean(passes[name])
            row["kt_to_target"] = statistics.mean(kts[name])
            row["end_to_end_median_s"] = prefill + row["median_s"]
        elif name.startswith("free generation"):
            row["end_to_end_median_s"] = row["median_s"]
        rows.append(row)
    return {"rows": rows, "rsd_at_k_equals_greedy": sum(exact) / len(exact), "max_row_difference": row_diff}


def throughput(
    target: Target, prompts: list[Prompt], budget: int, sizes: list[int], invariant: bool = False
) -> list[dict]:
    """Queries/s over all ``prompts`` in batches of each size, per decoder; stops at the first size that OOMs."""
    agent = _agent_for(target)
    configs = {
        f"rsd@{budget}": DecodingConfig("rsd", budget, agent),
        f"gsd@{budget}": DecodingConfig("gsd", budget),
        "greedy": DecodingConfig("greedy"),
        "first": DecodingConfig("std"),
    }
    device = target.model.device
    rows = []
    for size in sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        prefill, decode = 0.0, dict.fromkeys([*configs, "generate"], 0.0)
        try:
            for start in range(0, len(prompts), size):
                session = TargetSession.from_prompts(target, prompts[start : start + size], invariant)
                prefill += session.prefill_seconds
                for name, config in configs.items():
                    session.forget()
                    t0 = session.clock()
                    rank_many(session, config)
                    decode[name] += session.clock() - t0
                decode["generate"] += next(iter(session.generate_many().values())).seconds
        except RuntimeError as err:  # the session's out-of-memory message
            if "out of memory" not in str(err):
                raise
            rows.append({"batch": size, "error": str(err)})
            break
        n = len(prompts)
        for name, seconds in decode.items():
            e2e = seconds if name == "generate" else prefill + seconds
            rows.append(
                {
                    "batch": size,
                    "method": name,
                    "queries_per_s": n / e2e,
                    "decode_queries_per_s": None if name == "generate" else n / seconds,
                    "peak_memory_gib": _peak_memory(device),
                }
            )
    return rows


def ratios(result: dict) -> dict:
    """The goals of issue #14, as measured (reported, never asserted)."""
    by = {r["step"]: r for r in result["latency"]["rows"]}
    rsd = by[f"RSD@{result['budget']}"]["end_to_end_median_s"]
    out = {
        "rsd_e2e_over_greedy_e2e_batch1": rsd / by["constrained greedy (target)"]["end_to_end_median_s"],
        "rsd_e2e_over_generate_e2e_batch1": rsd / by["free generation (incl. its prefill)"]["end_to_end_median_s"],
    }
    rows = [r for r in result["throughput"] if r.get("method") == f"rsd@{result['budget']}"]
    base = next((r for r in rows if r["batch"] == 1), None)
    if base:
        for r in rows:
            if r["batch"] > 1:
                out[f"rsd_throughput_batch{r['batch']}_over_batch1"] = r["queries_per_s"] / base["queries_per_s"]
                out[f"rsd_decode_throughput_batch{r['batch']}_over_batch1"] = (
                    r["decode_queries_per_s"] / base["decode_queries_per_s"]
                )
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# Throughput: {result['model']} on {result['device']} ({result['dtype']})",
        "",
        f"K = {result['k']}, median prompt {result['prompt_tokens_median']} tokens, {result['queries']} SciFact test "
        f"claims; torch {result['torch']}, transformers {result['transformers']}.",
        "",
        "## Latency at batch 1 (seconds per query)",
        "",
        "| step | median s | p90 s | end-to-end median s | passes | KT to target |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["latency"]["rows"]:
        e2e = f"{r['end_to_end_median_s']:.3f}" if "end_to_end_median_s" in r else ""
        passes = f"{r['passes']:.1f}" if "passes" in r else ""
        kt = f"{r['kt_to_target']:.3f}" if "kt_to_target" in r else ""
        lines.append(f"| {r['step']} | {r['median_s']:.3f} | {r['p90_s']:.3f} | {e2e} | {passes} | {kt} |")
    lines += [
        "",
        f"RSD@K equals the greedy ranking for {result['latency']['rsd_at_k_equals_greedy']:.0%} of queries; the largest "
        f"difference between a verification row and the incremental step's row is {result['latency']['max_row_difference']:.2e}.",
        "",
        "## Throughput (queries per second; end to end = prefill included)",
        "",
        "| batch | method | end-to-end q/s | decode-phase q/s | peak memory GiB |",
        "|---|---|---|---|---|",
    ]
    for r in result["throughput"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['error']} | | | |")
            continue
        decode = "" if r["decode_queries_per_s"] is None else f"{r['decode_queries_per_s']:.2f}"
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['queries_per_s']:.3f} | {decode} | {r['peak_memory_gib']:.2f} |"
        )
    lines += ["", "## Ratios against the goals (measured, not asserted)", ""]
    lines += [f"- {name}: {value:.3f}" for name, value in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    import transformers

    tokenizer, prompts = load_bundle(Path(args.bundle))
    if args.dry_run:  # bf16 as on the GPU: the rounding paths run too
        args.model, args.dtype, args.queries, args.repeats, args.batch_sizes = "tiny-random", "bfloat16", 3, 1, [1, 2]
    if args.model in SHAPES:
        target = random_shape(args.model, tokenizer, args.device, args.dtype)
    else:
        target = load_target(args.model, device=args.device, dtype=args.dtype)
    prompts = prompts[: args.queries]
    device = target.model.device
    result = {
        "model": target.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "dtype": str(target.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "k": prompts[0].layout.k,
        "queries": len(prompts),
        "budget": args.budget,
        "prompt_tokens_median": statistics.median(len(p.token_ids) for p in prompts),
        "dry_run": args.dry_run,
        "batch_invariant": args.batch_invariant,
    }
    result["latency"] = latency(
        target, prompts[: args.latency_queries], args.budget, args.repeats, args.batch_invariant
    )
    result["throughput"] = throughput(target, prompts, args.budget, args.batch_sizes, args.batch_invariant)
    result["ratios"] = ratios(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="RankLLM prompts of SciFact test claims + the tokenizer, for any machine")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--index", default=str(ROOT / "indexes" / "beir-scifact"))
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--words", type=int, default=60, help="words per passage (60: prompts of about 2k tokens)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="RankLLM template (rank_zephyr_template.yaml: numbers)")
    p = sub.add_parser("run", help="measure")
    p.add_argument("--bundle", default="runs/bench")
    p.add_argument("--model", default="smollm2", help=f"smollm2, random-llama, a local model, or {', '.join(SHAPES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--queries", type=int, default=64, help="queries for throughput")
    p.add_argument("--latency-queries", type=int, default=4, help="queries timed at batch 1")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--dry-run", action="store_true", help="tiny shape, 3 queries, batches 1 and 2: every code path")
    p.add_argument(
        "--batch-invariant",
        action="store_true",
        help="batch-invariant passes (BatchConfig.batch_invariant): RSD@K equals greedy in any precision",
    )
    p.add_argument("--out", help="output stem for .json and .md (default: print only)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args)
        return 0
    result = run(args)
    table = markdown(result)
    print(table)
    if args.out:
        atomic_write(stem_file(args.out, ".json"), json.dumps(result, indent=2) + "\n")
        atomic_write(stem_file(args.out, ".md"), table)
        print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
