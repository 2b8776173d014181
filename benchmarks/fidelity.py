"""Fidelity to the target LLM's own greedy ranking: STD, GSD@T, consensus@T and RSD@T agents, with 95% bootstrap CIs.

For every claim the target's constrained greedy ranking is computed once; each proposer runs once at
the largest budget and the rankings after t passes are read off the same run (``Decoded.at``), which
is exactly what a run with budget t returns. Per-claim results are appended to
``<out>.claims.jsonl`` as they come, so an interrupted run resumes where it stopped.

    .venv/bin/python benchmarks/fidelity.py --target random-llama --queries 100 \\
        --agent rsd=random-llama --agent rsd-stage1=runs/agents/random-llama-eq/stage1 \\
        --out benchmarks/results/fidelity-random-llama

Writes ``<out>.json`` and ``<out>.md``. Queries come from BEIR SciFact *test* claims (BM25 top 20).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsd_rerank.agent import AgentProposer, exploration_report, resolve_agent
from rsd_rerank.decoding import decode
from rsd_rerank.files import atomic_write
from rsd_rerank.metrics import MEASURES, kendall_tau
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.proposers import PROPOSERS
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target

PAIRED_BUDGET = 5


def bootstrap(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval over claims."""
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_claims(args, target, requests, prompt: PromptConfig, proposers, done: dict) -> None:
    t_max = max(args.budgets)
    with open(args.claims, "a") as log:
        for request in tqdm(requests, desc=f"fidelity {target.name}", unit="claim"):
            qid = str(request.query.qid)
            if qid in done:
                continue
            session = TargetSession.from_request(target, request, prompt)
            greedy = session.greedy_ranking()
            k = session.k
            record = {"qid": qid, "target": greedy, "k": k, "methods": {}}
            for name, proposer in proposers.items():
                decoded = decode(session, proposer(session), t_max)
                record["methods"][name] = {
                    str(t): {"ranking": decoded.at(t)[0].tolist(), "passes": min(t, decoded.trace.passes)}
                    for t in [0, *args.budgets]
                }
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[qid] = record


def summarise(args, target_name: str, records: list[dict]) -> dict:
    rng = np.random.default_rng(0)
    targets = np.array([r["target"] for r in records])
    k = targets.shape[1]
    identity = np.tile(np.arange(k), (len(records), 1))
    std = np.array([r["methods"]["gsd"]["0"]["ranking"] for r in records])
    rows, per_claim = [], {}

    def add(method: str, budget: int, rankings: np.ndarray, passes: np.ndarray) -> None:
        row = {"method": method, "T": budget, "passes": float(passes.mean())}
        for metric, measure in MEASURES.items():
            values = measure.fn(rankings, targets).astype(float)
            row[metric] = bootstrap(values, rng)
            if metric == "KT":
                per_claim[(method, budget)] = values
        rows.append(row)

    add("std", 0, std, np.zeros(len(records)))
    for method in records[0]["methods"]:
        for t in args.budgets:
            rankings = np.array([r["methods"][method][str(t)]["ranking"] for r in records])
            passes = np.array([r["methods"][method][str(t)]["passes"] for r in records])
            add(method, t, rankings, passes)
    paired = []
    for method in records[0]["methods"]:
        if method in PROPOSERS or PAIRED_BUDGET not in args.budgets:
            continue
        for baseline in ("consensus", "gsd"):
            diff = per_claim[(method, PAIRED_BUDGET)] - per_claim[(baseline, PAIRED_BUDGET)]
            mean, lo, hi = bootstrap(diff, rng)
            paired.append({"method": method, "baseline": baseline, "T": PAIRED_BUDGET, "KT_diff": [mean, lo, hi]})
    for pair in args.pair:
        method, _, baseline = pair.partition(":")
        diff = per_claim[(method, PAIRED_BUDGET)] - per_claim[(baseline, PAIRED_BUDGET)]
        paired.append(
            {"method": method, "baseline": baseline, "T": PAIRED_BUDGET, "KT_diff": list(bootstrap(diff, rng))}
        )
    return {
        "target": target_name,
        "claims": len(records),
        "k": k,
        "requests": str(args.requests),
        "max_passage_words": args.max_passage_words,
        "difficulty": {
            "KT_greedy_vs_identifier_order": bootstrap(kendall_tau(identity, targets).astype(float), rng),
            "KT_greedy_vs_std": bootstrap(kendall_tau(std, targets).astype(float), rng),
        },
        "rows": rows,
        "paired_kt_difference": paired,
    }


def markdown(summary: dict, exploration: dict | None) -> str:
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    d = summary["difficulty"]
    lines = [
        f"# Fidelity to the greedy ranking of `{summary['target']}`",
        "",
        f"{summary['claims']} BEIR SciFact test claims, BM25 top {summary['k']}, passages ≤ "
        f"{summary['max_passage_words']} words (then fitted to the context). Mean [95% bootstrap CI]. "
        "KT/SR higher is better, FD/KD lower. T = LLM passes allowed after the prompt; `passes` = used on average.",
        "",
        f"Target difficulty: KT(greedy, identifier order) = {fmt(d['KT_greedy_vs_identifier_order'])}; "
        f"KT(greedy, STD) = {fmt(d['KT_greedy_vs_std'])}.",
        "",
        "| method | T | passes | KT | SR | FD | KD |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['method']} | {r['T']} | {r['passes']:.2f} | {fmt(r['KT'])} | {fmt(r['SR'])} | "
            f"{r['FD'][0]:.1f} | {r['KD'][0]:.1f} |"
        )
    if summary["paired_kt_difference"]:
        lines += ["", f"Paired bootstrap, per-claim KT difference at T = {PAIRED_BUDGET}:", ""]
        lines += ["| agent | minus | mean [95% CI] | above zero |", "|---|---|---|---|"]
        for p in summary["paired_kt_difference"]:
            lines.append(f"| {p['method']} | {p['baseline']} | {fmt(p['KT_diff'])} | {p['KT_diff'][1] > 0} |")
    if exploration:
        lines += [
            "",
            "Exploration (mean KT between 200 Plackett–Luce samples and the greedy order, first-round scores of "
            f"the first claim): raw scores {exploration['raw_scores']:.3f}, paper's softmax-normalised scores "
            f"{exploration['softmax_normalised']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="random-llama")
    p.add_argument("--requests", type=Path, default=Path("data/scifact/test.top20.jsonl"))
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3, 5, 7])
    p.add_argument("--agent", action="append", default=[], help="NAME=CHECKPOINT (dir or bundled name); repeat")
    p.add_argument("--pair", action="append", default=[], help="A:B, also report the paired KT difference A - B")
    p.add_argument("--max-passage-words", type=int, default=PromptConfig.max_passage_words)
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .json, .md, .claims.jsonl")
    args = p.parse_args(argv)
    args.claims = args.out.with_suffix(".claims.jsonl")
    torch.manual_seed(0)

    target = load_target(args.target)
    requests = read_requests(args.requests)[: args.queries]
    k = len(requests[0].candidates)
    proposers = {name: (lambda s, cls=cls: cls()) for name, cls in PROPOSERS.items()}
    agents = {}
    for spec in args.agent:
        name, _, checkpoint = spec.partition("=")
        agents[name] = resolve_agent(checkpoint, target, k)
        proposers[name] = lambda s, a=agents[name]: AgentProposer(a)

    done = {}
    if args.claims.exists():
        for line in args.claims.read_text().splitlines():
            record = json.loads(line)
            if set(record["methods"]) == set(proposers):
                done[record["qid"]] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompt = PromptConfig(max_passage_words=args.max_passage_words)
    run_claims(args, target, requests, prompt, proposers, done)
    records = [done[str(r.query.qid)] for r in requests]
    summary = summarise(args, target.name, records)

    exploration = None
    if agents:
        first = next(iter(agents.values()))
        session = TargetSession.from_request(target, requests[0], prompt)
        state = decode(session, PROPOSERS["gsd"](), 1).steps[0].state
        with torch.no_grad():
            exploration = exploration_report(first(state)[0])
        summary["exploration"] = exploration
    atomic_write(args.out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(args.out.with_suffix(".md"), markdown(summary, exploration))
    print(markdown(summary, exploration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
