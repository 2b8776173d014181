"""Is RSD worth it on this model? The difficulty figures of any target on any requests, before training anything.

For each request: the target's greedy ranking; its Kendall tau to identifier order and to STD (the
first-slot order); GSD, PDM (one Jacobi step per pass) and consensus at T passes, as KT to the greedy
ranking; and the prefix-dependence figure (``rsd_rerank.difficulty``). A target is paper-like, with room
for a learned proposer, when |KT(greedy, identifier order)| ≤ 0.3, KT(greedy, STD) ≤ 0.6, GSD@5 ≤ 0.85,
PDM@5 ≤ 0.90 and prefix dependence ≥ 10 % (the thresholds of issue #21).

Whether it reads its passages (issue #30; ``rsd_rerank.difficulty.content_figures``): shuffle consistency
(the mean KT between its rankings, as documents, of the same candidates in two seeded random orders: 1
for a reranker that reads, about 0 for a letter habit), the KT between different requests' rankings of
shuffled candidates as identifiers (about 0 for a content-driven model), and, with ``--qrels``, the
nDCG@10 of the greedy ranking beside the request order's (BM25's, for BM25 request files).

    .venv/bin/python benchmarks/difficulty.py --target smollm2-reranker --requests data/scifact/test.top20.jsonl \\
        --queries 100 --max-passage-words 30 --out benchmarks/results/difficulty-smollm2-reranker

Per-claim records are appended to ``<out>.claims.jsonl`` as they come (an interrupted run resumes);
writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rsd_rerank.difficulty import SWAPS, claim_difficulty, content_figures, greedy_ranker, letter_kt
from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.metrics import bootstrap_mean, kendall_tau
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target, smollm2_reranker

THRESHOLDS = {
    "abs KT(greedy, identifier order)": ("kt_identifier_abs", "<=", 0.3),
    "KT(greedy, STD)": ("kt_std", "<=", 0.6),
    "GSD@5": ("gsd@5", "<=", 0.85),
    "PDM@5": ("pdm@5", "<=", 0.90),
    "prefix dependence": ("prefix_dependence", ">=", 0.10),
}


def ratio_bootstrap(changed: np.ndarray, compared: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    """Pooled share changed / compared with a bootstrap interval over claims."""
    idx = rng.integers(0, len(changed), size=(n, len(changed)))
    shares = changed[idx].sum(axis=1) / compared[idx].sum(axis=1)
    pooled = changed.sum() / compared.sum()
    return [float(pooled), float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5))]


def summarise(records: list[dict], budgets: list[int], meta: dict) -> dict:
    rng = np.random.default_rng(0)
    column = lambda name: np.array([r[name] for r in records], dtype=float)  # noqa: E731
    figures = {
        "kt_identifier": bootstrap_mean(column("kt_identifier"), rng),
        "kt_identifier_abs": bootstrap_mean(np.abs(column("kt_identifier")), rng),
        "kt_std": bootstrap_mean(column("kt_std"), rng),
        **{f"{m}@{t}": bootstrap_mean(column(f"{m}@{t}"), rng) for t in budgets for m in ("gsd", "pdm", "consensus")},
        "prefix_dependence": ratio_bootstrap(column("prefix_changed"), column("prefix_compared"), rng),
    }
    same_k = [r["greedy"] for r in records if r["k"] == records[0]["k"]]
    if len(same_k) > 1:
        # A content-blind model writes the same identifiers in the same order whatever the passages: the
        # bounds above cannot see that (its fixed order is neither identifier order nor STD's), this can.
        first, second = np.triu_indices(len(same_k), k=1)
        greedy = np.asarray(same_k)
        figures["kt_between_requests"] = [float(kendall_tau(greedy[first], greedy[second]).mean())] * 3
    figures["shuffle_consistency"] = bootstrap_mean(column("shuffle_kt"), rng)
    figures["letter_kt_shuffled"] = [letter_kt([r["shuffled_letters"] for r in records])] * 3
    if all("ndcg@10" in r for r in records):
        figures["ndcg@10"] = bootstrap_mean(column("ndcg@10"), rng)
        figures["ndcg@10 (request order)"] = bootstrap_mean(column("ndcg@10 (request order)"), rng)
    checks = {}
    for label, (name, op, bound) in THRESHOLDS.items():
        if name in figures:
            value = figures[name][0]
            checks[label] = {
                "value": value,
                "bound": f"{op} {bound}",
                "met": value <= bound if op == "<=" else value >= bound,
            }
    return {**meta, "claims": len(records), "figures": figures, "thresholds": checks}


def markdown(summary: dict) -> str:
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    f = summary["figures"]
    lines = [
        f"# Difficulty of `{summary['target']}` for speculative ranking decoders",
        "",
        f"{summary['claims']} requests from `{summary['requests']}` (candidates in the file's order), passages ≤ "
        f"{summary['max_passage_words']} words. KT = Kendall tau to the target's own greedy ranking, mean [95% "
        f"bootstrap CI]. Prefix dependence: share of later greedy items that change when early items of the "
        f"teacher-forced greedy ranking are swapped (slots {', '.join(f'{a}↔{b}' for a, b in SWAPS)}), pooled.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| KT(greedy, identifier order) | {fmt(f['kt_identifier'])} |",
        f"| KT(greedy, STD) | {fmt(f['kt_std'])} |",
    ]
    for t in summary["budgets"]:
        lines += [f"| {m.upper()}@{t} | {fmt(f[f'{m}@{t}'])} |" for m in ("gsd", "pdm", "consensus")]
    lines.append(f"| prefix dependence | {fmt(f['prefix_dependence'])} |")
    lines += [
        f"| shuffle consistency (KT between its rankings of two seeded shuffles, as documents; 1 = reads) "
        f"| {fmt(f['shuffle_consistency'])} |",
        f"| KT between requests' rankings of shuffled candidates, as identifiers (0 = content-driven) "
        f"| {f['letter_kt_shuffled'][0]:.3f} |",
    ]
    if "ndcg@10" in f:
        lines.append(f"| nDCG@10 of the greedy ranking | {fmt(f['ndcg@10'])} |")
        lines.append(f"| nDCG@10 of the request order | {fmt(f['ndcg@10 (request order)'])} |")
    if "kt_between_requests" in f:
        lines.append(
            f"| KT between requests' greedy rankings (same identifiers, other passages; 1 = content-blind) "
            f"| {f['kt_between_requests'][0]:.3f} |"
        )
    if summary["thresholds"]:
        lines += ["", "| paper-like when | bound | value | met |", "|---|---|---|---|"]
        for label, c in summary["thresholds"].items():
            lines.append(f"| {label} | {c['bound']} | {c['value']:.3f} | {c['met']} |")
    return "\n".join(lines) + "\n"


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid 0 docid grade`` as {qid: {docid: grade}}."""
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            qid, _, docid, grade = line.split()
            out.setdefault(qid, {})[docid] = int(grade)
    return out


def ndcg_at_10(ranking: list[str], judged: dict[str, int]) -> float:
    """nDCG@10 with linear gains (trec_eval's and ir_measures' definition); 0 where nothing is relevant."""
    gain = lambda grades: sum(g / np.log2(i + 2) for i, g in enumerate(grades[:10]))  # noqa: E731
    ideal = gain(sorted((g for g in judged.values() if g > 0), reverse=True))
    return gain([max(judged.get(d, 0), 0) for d in ranking]) / ideal if ideal else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-reranker", help="a target name or local model directory")
    p.add_argument("--requests", type=Path, default=Path("data/scifact/test.top20.jsonl"))
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[5])
    p.add_argument("--max-passage-words", type=int, default=PromptConfig.max_passage_words)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--qrels", type=Path, help="TREC qrels: nDCG@10 of the greedy ranking and of the request order")
    p.add_argument(
        "--adapter", type=Path, help="a reranker LoRA to merge into SmolLM2 instead of --target (validation)"
    )
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .json, .md, .claims.jsonl")
    args = p.parse_args(argv)
    claims = stem_file(args.out, ".claims.jsonl")
    if args.adapter:
        target = smollm2_reranker(dtype=args.dtype, adapter=args.adapter)
    else:
        target = load_target(args.target, dtype=args.dtype)
    requests = read_requests(args.requests)[: args.queries]
    prompt = PromptConfig(max_passage_words=args.max_passage_words)
    key = {"target": target.name, "max_passage_words": args.max_passage_words, "budgets": args.budgets, "content": 1}
    qrels = _qrels(args.qrels) if args.qrels else None
    rank_requests = greedy_ranker(target, prompt, batch=3)
    done = {}
    if claims.exists():
        for line in claims.read_text().splitlines():
            record = json.loads(line)
            if record.get("key") == key:
                done[record["qid"]] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(claims, "a") as log:
        for request in tqdm(requests, desc=f"difficulty {target.name}", unit="claim"):
            qid = str(request.query.qid)
            if qid in done:
                continue
            session = TargetSession.from_request(target, request, prompt)
            record = {"qid": qid, "key": key, **claim_difficulty(session, 0, args.budgets)}
            content = content_figures(rank_requests, [request])
            record["shuffle_kt"], record["shuffled_letters"] = content["shuffle_kt"][0], content["shuffled"][0]
            if qrels is not None:
                docids = [str(c.docid) for c in request.candidates]
                record["ndcg@10"] = ndcg_at_10([docids[i] for i in record["greedy"]], qrels.get(qid, {}))
                record["ndcg@10 (request order)"] = ndcg_at_10(docids, qrels.get(qid, {}))
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[qid] = record
    records = [done[str(r.query.qid)] for r in requests]
    meta = {"target": target.name, "requests": str(args.requests), "max_passage_words": args.max_passage_words}
    summary = summarise(records, args.budgets, {**meta, "budgets": args.budgets, "dtype": str(target.model.dtype)})
    atomic_write(stem_file(args.out, ".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(stem_file(args.out, ".md"), markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
