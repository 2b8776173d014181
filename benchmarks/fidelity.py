"""Fidelity to the target LLM's own greedy ranking: STD, GSD@T, consensus@T, RSD@T agents and the
paper's baselines (SDM, Blockwise, Medusa, PDM, FIRST and RankZephyr fine-tuned on the target, FIRST +
SD), with 95% bootstrap CIs, paired CIs of each agent minus each baseline at T = 5, and tokens fed per
pass and decode seconds per query beside fidelity.

For every claim the target's constrained greedy ranking is computed once; every method then runs
once per budget on the same session (its KV of the last ranking forgotten, so each run pays its own
passes). Per-claim results are appended to ``<out>.claims.jsonl`` as they come, so an interrupted run
resumes where it stopped; they are keyed by the weights of the target and of every agent and companion
(not their names), so a retrained agent is measured again.

    .venv/bin/python benchmarks/fidelity.py --target random-llama --queries 100 \\
        --agent rsd=random-llama --baselines sdm,blockwise,medusa,pdm,first-ft,rankzephyr-ft,first-sd \\
        --out benchmarks/results/fidelity-random-llama

Baselines' heads and fine-tuned rankers come from ``rsd-rerank finetune`` (their default folders, or
``--ranker METHOD=DIR``). Writes ``<out>.json`` and ``<out>.md``. Queries come from BEIR SciFact
*test* claims (BM25 top 20).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsd_rerank.agent import AgentProposer, agent_digest, exploration_report, resolve_agent
from rsd_rerank.companions import companion_digest
from rsd_rerank.decoding import decode
from rsd_rerank.difficulty import decoding_run, method_run
from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.methods import decoding_with
from rsd_rerank.metrics import MEASURES, bootstrap_mean, kendall_tau
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.proposers import PROPOSERS
from rsd_rerank.registry import BASELINES, BUDGETED, REGISTRY, TRAINED_BASELINES
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target
from rsd_rerank.training.cache import target_fingerprint

PAIRED_BUDGET = 5
BESIDE = (*BASELINES, *(m for m in BUDGETED if REGISTRY[m].runs == "drafts"))
"""What ``--baselines`` may name: the paper's baselines and the several-drafts method."""


def records_key(args, target, prompt: PromptConfig, agents: dict, k: int) -> dict:
    """What a claim's record depends on: the weights of the target, of every ``--agent`` and of every
    baseline's companion (a name can outlive a retraining), the prompt and the budgets."""
    companions = {}
    for name in args.baselines:
        spec = args.rankers.get(name)
        if REGISTRY[name].companion == "agent":
            companions[name] = agent_digest(resolve_agent(spec, target, k))
        elif name in TRAINED_BASELINES:
            companions[name] = companion_digest(spec, target, name)
        else:
            companions[name] = spec  # pdm: none; sdm: the drafter model's name, if any
    key = {
        "target": target_fingerprint(target),
        "prompt": asdict(prompt),
        "budgets": args.budgets,
        "agents": {name: agent_digest(agent) for name, agent in agents.items()},
        "baselines": companions,
    }
    return json.loads(json.dumps(key))  # as a record read back holds it


def run_claims(args, target, requests, prompt: PromptConfig, proposers, done: dict) -> None:
    with open(args.claims, "a") as log:
        for request in tqdm(requests, desc=f"fidelity {target.name}", unit="claim"):
            qid = str(request.query.qid)
            if qid in done:
                continue
            session = TargetSession.from_request(target, request, prompt)
            greedy = session.greedy_ranking()
            k = session.k
            record = {"qid": qid, "key": args.key, "target": greedy, "k": k, "methods": {}}
            for name, proposer in proposers.items():
                record["methods"][name] = {
                    str(t): decoding_run(session, lambda s, p=proposer, t=t: decode(s, p(s), t))
                    for t in [0, *args.budgets]
                }
            for name in args.baselines:
                # rsd-drafts' companion is an agent (--ranker rsd-drafts=AGENT); the others' a ranker or heads.
                record["methods"][name] = {
                    str(t): method_run(session, decoding_with(name, t, args.rankers.get(name)))
                    for t in (args.budgets if name in BUDGETED else [0])
                }
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[qid] = record


def _paired_with(path: Path, records: list[dict], agents: list[str], per_claim: dict, rng) -> list[dict]:
    """Each agent at T = 5 minus every method of another run's ``.claims.jsonl`` on the same claims (its
    heads and fine-tunes need not run again); that run's target rankings must equal this run's."""
    other = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        other[record["qid"]] = record
    missing = [r["qid"] for r in records if r["qid"] not in other]
    if missing:
        raise ValueError(f"--paired-with {path}: no record of claims {', '.join(missing[:5])}")
    theirs = [other[r["qid"]] for r in records]
    differ = [r["qid"] for r, o in zip(records, theirs, strict=True) if r["target"] != o["target"]]
    if differ:
        raise ValueError(f"--paired-with {path}: another target ranking on claims {', '.join(differ[:5])}")
    targets = np.array([r["target"] for r in records])
    out = []
    for method in theirs[0]["methods"]:
        t = str(PAIRED_BUDGET) if str(PAIRED_BUDGET) in theirs[0]["methods"][method] else "0"
        kt = kendall_tau(np.array([o["methods"][method][t]["ranking"] for o in theirs]), targets).astype(float)
        for agent in agents:
            mean, lo, hi = bootstrap_mean(per_claim[(agent, PAIRED_BUDGET)] - kt, rng)
            out.append(
                {"method": agent, "baseline": f"{method} ({path.name})", "T": PAIRED_BUDGET, "baseline_T": int(t),
                 "KT_diff": [mean, lo, hi]}
            )  # fmt: skip
    return out


def summarise(args, target_name: str, records: list[dict], agents: list[str]) -> dict:
    rng = np.random.default_rng(0)
    targets = np.array([r["target"] for r in records])
    k = targets.shape[1]
    identity = np.tile(np.arange(k), (len(records), 1))
    std = np.array([r["methods"]["gsd"]["0"]["ranking"] for r in records])
    rows, per_claim = [], {}

    def add(method: str, budget: int, rankings: np.ndarray, runs: list[dict]) -> None:
        passes = np.array([r["passes"] for r in runs], dtype=float)
        tokens = np.array([r["tokens"] for r in runs], dtype=float)
        row = {
            "method": method,
            "T": budget,
            "passes": float(passes.mean()),
            "tokens_per_pass": float(tokens.sum() / passes.sum()) if passes.sum() else 0.0,
            "decode_seconds": float(np.mean([r["seconds"] for r in runs])),
        }
        for metric, measure in MEASURES.items():
            values = measure.fn(rankings, targets).astype(float)
            row[metric] = bootstrap_mean(values, rng)
            if metric == "KT":
                per_claim[(method, budget)] = values
        rows.append(row)

    add("std", 0, std, [r["methods"]["gsd"]["0"] for r in records])
    for method in records[0]["methods"]:
        for t in records[0]["methods"][method]:
            if t == "0" and method in ("gsd", "consensus", *agents):
                continue  # the STD order again
            rankings = np.array([r["methods"][method][t]["ranking"] for r in records])
            add(method, int(t), rankings, [r["methods"][method][t] for r in records])
    paired = []
    baselines = [m for m in records[0]["methods"] if m not in agents]
    for method in agents:
        if PAIRED_BUDGET not in args.budgets:
            break
        for baseline in baselines + ["std"]:
            t = PAIRED_BUDGET if (baseline, PAIRED_BUDGET) in per_claim else 0
            diff = per_claim[(method, PAIRED_BUDGET)] - per_claim[(baseline, t)]
            mean, lo, hi = bootstrap_mean(diff, rng)
            paired.append(
                {"method": method, "baseline": baseline, "T": PAIRED_BUDGET, "baseline_T": t, "KT_diff": [mean, lo, hi]}
            )
    for other in args.paired_with:
        paired += _paired_with(other, records, agents, per_claim, rng)
    for pair in args.pair:
        method, _, baseline = pair.partition(":")
        diff = per_claim[(method, PAIRED_BUDGET)] - per_claim[(baseline, PAIRED_BUDGET)]
        paired.append(
            {
                "method": method,
                "baseline": baseline,
                "T": PAIRED_BUDGET,
                "baseline_T": PAIRED_BUDGET,
                "KT_diff": list(bootstrap_mean(diff, rng)),
            }
        )
    return {
        "target": target_name,
        "claims": len(records),
        "k": k,
        "requests": str(args.requests),
        "max_passage_words": args.max_passage_words,
        "template": args.template,
        "dtype": args.resolved_dtype,
        "difficulty": {
            "KT_greedy_vs_identifier_order": bootstrap_mean(kendall_tau(identity, targets).astype(float), rng),
            "KT_greedy_vs_std": bootstrap_mean(kendall_tau(std, targets).astype(float), rng),
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
        f"{summary['max_passage_words']} words (then fitted to the context), template `{summary.get('template', PromptConfig.template)}`, "
        f"dtype {summary['dtype']}. Mean [95% bootstrap CI]. "
        "KT/SR higher is better, FD/KD lower. T = LLM passes allowed after the prompt; `passes` = used on average.",
        "",
        f"Target difficulty: KT(greedy, identifier order) = {fmt(d['KT_greedy_vs_identifier_order'])}; "
        f"KT(greedy, STD) = {fmt(d['KT_greedy_vs_std'])}.",
        "",
        "| method | T | passes | tokens/pass | decode s/query | KT | SR | FD | KD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['method']} | {r['T']} | {r['passes']:.2f} | {r['tokens_per_pass']:.0f} | "
            f"{r['decode_seconds']:.3f} | {fmt(r['KT'])} | {fmt(r['SR'])} | {r['FD'][0]:.1f} | {r['KD'][0]:.1f} |"
        )
    if summary["paired_kt_difference"]:
        lines += ["", f"Paired bootstrap, per-claim KT difference of each agent at T = {PAIRED_BUDGET}:", ""]
        lines += ["| agent | minus | at T | mean [95% CI] | above zero |", "|---|---|---|---|---|"]
        for p in summary["paired_kt_difference"]:
            lines.append(
                f"| {p['method']} | {p['baseline']} | {p['baseline_T']} | {fmt(p['KT_diff'])} | {p['KT_diff'][1] > 0} |"
            )
    if exploration:
        lines += [
            "",
            "Exploration (mean KT between 200 Plackett–Luce samples and the greedy order, first-round scores of "
            f"the first claim): raw scores {exploration['raw_scores']:.3f}, paper's softmax-normalised scores "
            f"{exploration['softmax_normalised']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None, target=None) -> int:
    """The benchmark on ``--target``, or on ``target`` (a ``Target`` built in code; ``--target`` is then ignored)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="random-llama")
    p.add_argument("--requests", type=Path, default=Path("data/scifact/test.top20.jsonl"))
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3, 5, 7])
    p.add_argument("--agent", action="append", default=[], help="NAME=CHECKPOINT (dir or bundled name); repeat")
    p.add_argument("--pair", action="append", default=[], help="A:B, also report the paired KT difference A - B")
    p.add_argument(
        "--baselines",
        type=lambda s: [m for m in s.split(",") if m],
        default=[],
        help=f"comma-separated, of {','.join(BESIDE)}",
    )
    p.add_argument(
        "--ranker",
        action="append",
        default=[],
        help="METHOD=DIR: a baseline's heads or fine-tune (rsd-drafts: its agent)",
    )
    p.add_argument(
        "--paired-with",
        action="append",
        default=[],
        type=Path,
        help="another run's .claims.jsonl on the same claims: pair each agent at T = 5 with its every method; repeat",
    )
    p.add_argument("--max-passage-words", type=int, default=PromptConfig.max_passage_words)
    p.add_argument(
        "--template",
        default=PromptConfig.template,
        help="RankLLM template (rank_zephyr_template.yaml: numbers [1]..[K] as identifiers)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="the target's precision (auto: see rsd-rerank --dtype; the one used is recorded)",
    )
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .json, .md, .claims.jsonl")
    args = p.parse_args(argv)
    args.claims = stem_file(args.out, ".claims.jsonl")
    unknown = [m for m in args.baselines if m not in BESIDE]
    if unknown:
        p.error(f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BESIDE)}")
    args.rankers = dict(spec.split("=", 1) for spec in args.ranker)
    torch.manual_seed(0)

    if target is None:
        target = load_target(args.target, dtype=args.dtype)
    args.resolved_dtype = str(target.model.dtype).removeprefix("torch.")
    requests = read_requests(args.requests)[: args.queries]
    k = len(requests[0].candidates)
    proposers = {name: (lambda s, cls=PROPOSERS[name]: cls()) for name in ("gsd", "consensus")}
    agents = {}
    for spec in args.agent:
        name, _, checkpoint = spec.partition("=")
        agents[name] = resolve_agent(checkpoint, target, k)
        proposers[name] = lambda s, a=agents[name]: AgentProposer(a)

    prompt = PromptConfig(template=args.template, max_passage_words=args.max_passage_words)
    args.key = records_key(args, target, prompt, agents, k)
    done = {}
    if args.claims.exists():
        for line in args.claims.read_text().splitlines():
            record = json.loads(line)
            if record.get("key") == args.key and set(record["methods"]) == {*proposers, *args.baselines}:
                done[record["qid"]] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_claims(args, target, requests, prompt, proposers, done)
    records = [done[str(r.query.qid)] for r in requests]
    summary = summarise(args, target.name, records, list(agents))

    exploration = None
    if agents:
        first = next(iter(agents.values()))
        session = TargetSession.from_request(target, requests[0], prompt)
        state = decode(session, PROPOSERS["gsd"](), 1).steps[0].state
        with torch.no_grad():
            exploration = exploration_report(first(state)[0])
        summary["exploration"] = exploration
    atomic_write(stem_file(args.out, ".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(stem_file(args.out, ".md"), markdown(summary, exploration))
    print(markdown(summary, exploration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
