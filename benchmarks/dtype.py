"""float32 against bfloat16 on this machine's CPU, with the project's own throughput benchmark: prefill,
a verification pass, the constrained greedy target, GSD@5 and RSD@5 end to end at batch 1, and
queries/s at each batch size, for both precisions on the same prompts in one process. What ``--dtype
auto`` picks here (and why) is recorded beside the numbers, so the README's CPU tables say which
precision produced them.

    .venv/bin/python benchmarks/throughput.py prepare --out runs/bench --queries 64
    .venv/bin/python benchmarks/dtype.py --bundle runs/bench --queries 8 --batch-sizes 1,8 \\
        --out benchmarks/results/dtype-cpu

Writes ``<out>.json`` (both throughput results whole) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the sibling benchmark: one measurement, run twice)

from rsd_rerank.files import atomic_write, stem_file  # noqa: E402
from rsd_rerank.targets import auto_dtype, cpu_bf16_flags  # noqa: E402

DTYPES = ("float32", "bfloat16")


def measure(args: argparse.Namespace) -> dict:
    """Both precisions' throughput results, float32 first, and what ``--dtype auto`` chooses here."""
    results = {}
    for dtype in DTYPES:
        run_args = argparse.Namespace(**{**vars(args), "dtype": dtype, "device": "cpu", "dry_run": False})
        results[dtype] = throughput.run(run_args)
    chosen, why = auto_dtype(torch.device("cpu"))
    return {
        "cpu_bf16_flags": cpu_bf16_flags(),
        "auto": chosen,
        "auto_reason": why,
        "latency_queries": args.latency_queries,
        "repeats": args.repeats,
        "results": results,
    }


def markdown(summary: dict) -> str:
    fp32, bf16 = (summary["results"][d] for d in DTYPES)
    lines = [
        f"# float32 against bfloat16 on the CPU: {fp32['model']}, {fp32['device']}, {fp32['threads']} threads",
        "",
        f"K = {fp32['k']}, median prompt {fp32['prompt_tokens_median']} tokens, {fp32['queries']} SciFact test claims "
        f"(latency: the first {summary['latency_queries']} of them, median of {summary['repeats']} rounds after a "
        f"warm-up); torch {fp32['torch']}, transformers {fp32['transformers']}. "
        f"`--dtype auto` here: **{summary['auto']}** ({summary['auto_reason']}).",
        "",
        "## Latency at batch 1 (median seconds per query)",
        "",
        "| step | float32 s | bfloat16 s | speed-up | float32 KT to its target | bfloat16 KT to its target |",
        "|---|---|---|---|---|---|",
    ]
    by16 = {r["step"]: r for r in bf16["latency"]["rows"]}
    for r in fp32["latency"]["rows"]:
        s = by16[r["step"]]
        kt = lambda row: f"{row['kt_to_target']:.3f}" if "kt_to_target" in row else ""  # noqa: E731
        lines.append(
            f"| {r['step']} | {r['median_s']:.3f} | {s['median_s']:.3f} | "
            f"{r['median_s'] / s['median_s']:.2f}× | {kt(r)} | {kt(s)} |"
            if s["median_s"] > 0
            else f"| {r['step']} | {r['median_s']:.3f} | {s['median_s']:.3f} | | {kt(r)} | {kt(s)} |"
        )
    per_pass = []
    for name in DTYPES:
        gsd = next(r for r in summary["results"][name]["latency"]["rows"] if r["step"].startswith("GSD@"))
        per_pass.append(gsd["median_s"] / gsd["passes"])
    lines.append(
        f"| one verification pass (GSD's decode ÷ its passes) | {per_pass[0]:.3f} | {per_pass[1]:.3f} | "
        f"{per_pass[0] / per_pass[1]:.2f}× | | |"
    )
    lines += [
        "",
        "| exactness | float32 | bfloat16 |",
        "|---|---|---|",
        f"| RSD@K equals the greedy ranking | {fp32['latency']['rsd_at_k_equals_greedy']:.0%} | "
        f"{bf16['latency']['rsd_at_k_equals_greedy']:.0%} |",
        f"| largest verification-row vs incremental-step difference | {fp32['latency']['max_row_difference']:.2e} | "
        f"{bf16['latency']['max_row_difference']:.2e} |",
        "",
        "## Throughput (queries per second, prefill included)",
        "",
        "| batch | method | float32 q/s | bfloat16 q/s | speed-up | float32 peak GiB | bfloat16 peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    note = (
        "Peak memory on the CPU is the process's maximum RSS so far, and bfloat16 runs after float32 in the "
        "same process: its column repeats float32's peak wherever its own is lower."
        if fp32["device"].startswith("cpu")
        else ""
    )
    by16 = {(r["batch"], r.get("method")): r for r in bf16["throughput"]}
    for r in fp32["throughput"]:
        s = by16.get((r["batch"], r.get("method")))
        if "error" in r or s is None or "error" in s:
            continue
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['queries_per_s']:.3f} | {s['queries_per_s']:.3f} | "
            f"{s['queries_per_s'] / r['queries_per_s']:.2f}× | {r['peak_memory_gib']:.2f} | {s['peak_memory_gib']:.2f} |"
        )
    return "\n".join([*lines, "", note] if note else lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="runs/bench", help="made by `throughput.py prepare`")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--queries", type=int, default=8, help="queries for throughput")
    p.add_argument("--latency-queries", type=int, default=4, help="queries timed at batch 1")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8])
    p.add_argument("--out", type=Path, required=True, help="output stem for .json and .md")
    args = p.parse_args(argv)
    summary = measure(args)
    table = markdown(summary)
    print(table)
    atomic_write(stem_file(args.out, ".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(stem_file(args.out, ".md"), table)
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
