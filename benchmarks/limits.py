"""When RSD pays: each phase of a listwise ranking against the machine's physical limits.

A decode step reads every weight once for one token: it is bound by memory bandwidth where
``weight bytes / bandwidth`` is near the measured step. A verification pass feeds a whole ranking
(76 tokens for K = 20 letters) for the same weight read: it costs about one step where the step is
memory-bound and about 76 tokens' FLOPs where it is compute-bound. RSD replaces K − 1 steps by T
passes, so it saves time in the first case and little in the second.

Measured here, on the machine that runs it:
- the memory bandwidth a bf16 matrix-vector product reaches over 2 GiB of weights (the decode
  step's access pattern), and that of a plain copy;
- the bf16 matrix-matrix peak (what a prefill can reach);
- for each model: a prefill of ``--prompt-tokens`` tokens, one decode step and one 76-token
  verification pass on that KV cache (medians), beside their floors: weight bytes / bandwidth and
  2 · parameters · tokens / peak.

A GPU row, from the H100 SXM's spec sheet (3.35 TB/s, 989 dense bf16 TFLOPS), is an estimate and is
marked so until a lent GPU measures it (``benchmarks/throughput.py`` on the device).

    .venv/bin/python benchmarks/limits.py --out benchmarks/results/limits-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SHAPES  # noqa: E402

from rsd_rerank.files import atomic_write, stem_file  # noqa: E402

PASS_TOKENS = 76
"""Tokens a K = 20 letters verification pass feeds (``benchmarks/results/identifiers-smollm2-cpu.md``)."""
FREE_TOKENS = 77
"""About the tokens RankLLM's free generation writes for K = 20 letters: ``[B] > [A] > …`` and its end (a full verification pass feeds 76)."""
H100 = {"bandwidth_gbs": 3350.0, "bf16_tflops": 989.0}
"""NVIDIA H100 SXM spec sheet: HBM3 bandwidth and dense bf16 tensor throughput (an estimate, not measured)."""


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_limits(repeats: int) -> dict[str, float]:
    """GB/s of a bf16 GEMV over 2 GiB of weights and of a 1 GiB copy; bf16 GEMM TFLOPS."""
    weights = [torch.randn(8192, 8192, dtype=torch.bfloat16) for _ in range(16)]  # 2 GiB
    x = torch.randn(1, 8192, dtype=torch.bfloat16)
    gemv = _best(lambda: [x @ w.T for w in weights], repeats)
    source = torch.empty(2**29, dtype=torch.bfloat16)
    target = torch.empty_like(source)
    copy = _best(lambda: target.copy_(source), repeats)
    a, b = torch.randn(2048, 4096, dtype=torch.bfloat16), torch.randn(4096, 4096, dtype=torch.bfloat16)
    gemm = _best(lambda: [a @ b for _ in range(4)], repeats)
    return {
        "gemv_bandwidth_gbs": 16 * 8192 * 8192 * 2 / gemv / 1e9,
        "copy_bandwidth_gbs": 2 * 2**30 * 2 / copy / 1e9,  # read + write
        "bf16_tflops": 4 * 2 * 2048 * 4096 * 4096 / gemm / 1e12,
    }


def _model(name: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rsd_rerank.targets import load_target

    if name == "smollm2":
        return load_target("smollm2", device="cpu", dtype="bfloat16").model
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: a 3B shape in fp32 would need 12 GiB more
    try:
        return LlamaForCausalLM(LlamaConfig(vocab_size=49152, **SHAPES[name])).eval()
    finally:
        torch.set_default_dtype(default)


def model_phases(name: str, prompt_tokens: int, repeats: int) -> dict[str, float]:
    """Seconds of a prefill, a decode step and a verification pass (medians), and the model's size."""
    from transformers import DynamicCache

    model = _model(name)
    params = sum(p.numel() for p in model.parameters())
    # The LM head reads the whole unembedding every step; the embedding table only one row per token.
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    step_bytes = 2 * (params - (0 if tied else embedding))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (1, prompt_tokens + PASS_TOKENS), generator=generator)
    cache = DynamicCache()
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=ids[:, :prompt_tokens], cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start

        def forward(tokens: int) -> float:
            start = time.perf_counter()
            model(input_ids=ids[:, prompt_tokens : prompt_tokens + tokens], cache=cache, use_cache=True)
            seconds = time.perf_counter() - start
            cache.crop(-tokens)
            return seconds

        forward(1)  # warm-up
        step = statistics.median(forward(1) for _ in range(repeats))
        verification = statistics.median(forward(PASS_TOKENS) for _ in range(repeats))
    return {
        "parameters": params,
        "step_bytes": step_bytes,
        "prefill_s": prefill,
        "step_s": step,
        "pass_s": verification,
    }


def floors(phases: dict[str, float], bandwidth_gbs: float, tflops: float, prompt_tokens: int) -> dict[str, float]:
    """The least each phase can cost at ``bandwidth_gbs`` and ``tflops``: weights read once, FLOPs at peak."""
    read = phases["step_bytes"] / (bandwidth_gbs * 1e9)
    flops = lambda tokens: 2 * phases["parameters"] * tokens / (tflops * 1e12)  # noqa: E731
    return {
        "prefill_floor_s": max(read, flops(prompt_tokens)),
        "step_floor_s": max(read, flops(1)),
        "pass_floor_s": max(read, flops(PASS_TOKENS)),
    }


def _table(result: dict) -> str:
    m, p = result["machine"], result["prompt_tokens"]
    lines = [
        f"# When RSD pays: phases against physical limits ({result['device']}, bf16)",
        "",
        f"Measured with {result['threads']} threads, torch {result['torch']}. bf16 GEMV over 2 GiB of weights: "
        f"**{m['gemv_bandwidth_gbs']:.1f} GB/s**; a 1 GiB copy: {m['copy_bandwidth_gbs']:.1f} GB/s (read + write); "
        f"bf16 GEMM: **{m['bf16_tflops']:.2f} TFLOPS**. Prompt: {p} tokens; a verification pass: {PASS_TOKENS} tokens "
        "(K = 20 letters). Floors: weights read once at the GEMV bandwidth, FLOPs at the GEMM peak, whichever is larger.",
        "",
        "| model | parameters | weight bytes per step | prefill s (floor) | step s (floor) | pass s (floor) | pass / step |"
        " step bound by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        bound = "memory" if row["step_s"] < 2 * row["step_floor_s"] else "compute and overheads"
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e9:.2f} B | {row['step_bytes'] / 1e9:.2f} GB | "
            f"{row['prefill_s']:.2f} ({row['prefill_floor_s']:.2f}) | {row['step_s']:.3f} ({row['step_floor_s']:.3f}) | "
            f"{row['pass_s']:.3f} ({row['pass_floor_s']:.3f}) | {row['pass_s'] / row['step_s']:.1f} | {bound} |"
        )
    lines += [
        "",
        "**Estimated, not measured: one H100 SXM at batch 1** (spec sheet: 3.35 TB/s, 989 dense bf16 TFLOPS; floors "
        "only, so real times are higher):",
        "",
        "| model | step floor ms | pass floor ms | pass / step |",
        "|---|---|---|---|",
    ]
    for row in result["gpu_estimate"]:
        lines.append(
            f"| {row['model']} | {1e3 * row['step_floor_s']:.2f} | {1e3 * row['pass_floor_s']:.2f} | "
            f"{row['pass_floor_s'] / row['step_floor_s']:.1f} |"
        )
    lines += [
        "",
        f"**End to end, from these phases** (seconds; RSD@5 and GSD@5: the prefill and 5 passes; greedy: the prefill "
        f"and K − 1 = 19 steps; free generation, RankLLM's way: the prefill and {FREE_TOKENS} steps, one per token of "
        "`[B] > [A] > …` and its end; GPU rows from the floors, so estimates):",
        "",
        "| model | where | RSD@5 s | greedy s | free generation s | RSD@5 / greedy | RSD@5 / free generation |",
        "|---|---|---|---|---|---|---|",
    ]
    for where, rows, keys in (
        ("CPU, measured", result["models"], ("prefill_s", "step_s", "pass_s")),
        ("H100, estimated", result["gpu_estimate"], ("prefill_floor_s", "step_floor_s", "pass_floor_s")),
    ):
        for row in rows:
            e = end_to_end(*(row[k] for k in keys))
            lines.append(
                f"| {row['model']} | {where} | {e['rsd5']:.3g} | {e['greedy']:.3g} | {e['free']:.3g} | "
                f"{e['rsd5'] / e['greedy']:.2f} | {e['rsd5'] / e['free']:.2f} |"
            )
    lines += [
        "",
        "Where a pass costs about one step (pass / step near 1), RSD@T's decode costs T steps against greedy's 19 and "
        f"free generation's {FREE_TOKENS}. Where it costs several (this CPU), RSD saves that much less.",
    ]
    return "\n".join(lines) + "\n"


def end_to_end(prefill: float, step: float, verification: float, budget: int = 5, k: int = 20) -> dict[str, float]:
    """Seconds of a whole ranking from its phases: RSD@T (T passes; fewer when it verifies early),
    greedy (K − 1 steps) and free generation (``FREE_TOKENS`` steps)."""
    return {
        "rsd5": prefill + budget * verification,
        "greedy": prefill + (k - 1) * step,
        "free": prefill + FREE_TOKENS * step,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,llama-3.2-3b-random", help="comma-separated: smollm2 and shapes")
    p.add_argument("--prompt-tokens", type=int, default=1926, help="the 3B throughput run's median prompt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .json and .md")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n != "smollm2" and n not in SHAPES]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose smollm2 or {', '.join(SHAPES)}")
    limits = machine_limits(args.repeats)
    print(json.dumps(limits))
    rows, gpu = [], []
    for name in names:
        phases = model_phases(name, args.prompt_tokens, args.repeats)
        measured = floors(phases, limits["gemv_bandwidth_gbs"], limits["bf16_tflops"], args.prompt_tokens)
        rows.append({"model": name, **phases, **measured})
        estimate = floors(phases, H100["bandwidth_gbs"], H100["bf16_tflops"], args.prompt_tokens)
        gpu.append({"model": name, **estimate})
        print(json.dumps(rows[-1]))
    result = {
        "device": f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prompt_tokens": args.prompt_tokens,
        "pass_tokens": PASS_TOKENS,
        "machine": limits,
        "models": rows,
        "gpu_estimate": gpu,
        "gpu_estimate_source": "NVIDIA H100 SXM spec sheet (not measured)",
    }
    atomic_write(stem_file(args.out, ".json"), json.dumps(result, indent=2) + "\n")
    atomic_write(stem_file(args.out, ".md"), _table(result))
    print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
