"""What Ray costs on one machine: SciFact test claims through the pipeline's reranking, in-process vs 1 and 2 Ray workers.

    .venv/bin/python benchmarks/scale.py                     # random-llama, 24 claims, BM25 top 20, gsd@5, CPU
    .venv/bin/python benchmarks/scale.py --model smollm2 --queries 12 --out benchmarks/results/scale-smollm2-cpu

On 2 cores no speed-up is expected (two actors share the cores the one process had); the point is
the path's overhead: starting the local cluster, each actor loading the target, and moving chunks
and results through Ray Data. Every configuration writes its run, and the runs must be identical
(checked here too). JSON and Markdown go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.integrations import datasets
from rsd_rerank.integrations.pipeline import candidate_requests, rerank_into_run
from rsd_rerank.integrations.scale import ScaleConfig, Workers, ray_cluster
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, WindowConfig
from rsd_rerank.targets import TargetConfig, load_target

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-llama")
    parser.add_argument("--index", default=str(ROOT / "indexes" / "beir-scifact"))
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale-random-llama-cpu"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "scale-bench"))
    args = parser.parse_args()

    topics = dict(list(datasets.queries("beir/scifact/test").items())[: args.queries])
    runs, requests = candidate_requests(args.index, topics, 20, 20)
    decoding, prompt = DecodingConfig("gsd", 5), PromptConfig()
    batching, windows = BatchConfig(args.batch_size), WindowConfig(rerank_top=20)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, texts = [], {}
    for workers in (None, 1, 2):
        name = "in process" if workers is None else f"Ray, {workers} worker{'s' * (workers > 1)}"
        out = work / f"{'local' if workers is None else workers}.trec"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        if workers is None:
            engine = load_target(args.model, device="cpu", dtype="float32")
            ready = time.perf_counter()
            rerank_into_run(engine, requests, runs, out, decoding, prompt, batching, windows, {})
        else:
            with ray_cluster(ScaleConfig(workers)):
                engine = Workers(TargetConfig(args.model, device="cpu", dtype="float32"), ScaleConfig(workers))
                ready = time.perf_counter()
                rerank_into_run(engine, requests, runs, out, decoding, prompt, batching, windows, {})
        end = time.perf_counter()
        texts[name] = out.read_text()
        rows.append(
            {
                "configuration": name,
                "setup_seconds": ready - start,
                "rerank_seconds": end - ready,
                "total_seconds": end - start,
                "queries_per_second": len(requests) / (end - start),
            }
        )
    identical = len(set(texts.values())) == 1
    meta = {
        "target": args.model,
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), float32",
        "queries": len(requests),
        "k": 20,
        "method": decoding.run_tag,
        "batch_size": args.batch_size,
        "runs_identical": identical,
    }
    out = Path(args.out)
    atomic_write(stem_file(out, ".json"), json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# Ray scale-out on one machine: {meta['target']}, {meta['device']}, {meta['queries']} SciFact test claims, "
        f"BM25 top 20, {meta['method']}, batch size {args.batch_size}",
        "",
        "| configuration | set-up s (in process: target load; Ray: cluster start) | rerank s (Ray: actors load the target here) | total s | queries / s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['setup_seconds']:.1f} | {r['rerank_seconds']:.1f} | "
            f"{r['total_seconds']:.1f} | {r['queries_per_second']:.2f} |"
        )
    lines += ["", f"Runs identical across configurations: {'yes' if identical else 'NO'}."]
    atomic_write(stem_file(out, ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
