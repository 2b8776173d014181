"""The report behind ``rsd-rerank difficulty``: is RSD worth it on this model, and with which method?

Per request (``rsd_rerank.difficulty``): the target's greedy ranking; KT to it of GSD, consensus, PDM,
RSD (with the agent ``--method rsd`` picks, or ``--agent``) and RSD-drafts at each budget, with the
tokens each pass fed; the difficulty figures of ``shared/targets.md`` (KT of the greedy ranking to
identifier order and to STD, prefix dependence); whether the model reads its passages (shuffle
consistency, letter KT between requests); nDCG@10 where qrels are given. Then a summary with 95%
bootstrap CIs and one recommendation: which method and budget to use, and whether training an agent
for this model is worth its minutes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rsd_rerank.agent.store import agent_digest, resolve_agent
from rsd_rerank.difficulty import SWAPS, claim_difficulty, content_figures, greedy_ranker, letter_kt
from rsd_rerank.metrics import bootstrap_mean, kendall_tau
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target
from rsd_rerank.training.cache import target_fingerprint

__all__ = ["REPORT_METHODS", "claim_records", "judged_by_query", "markdown", "ndcg_at_10", "recommend", "summarise"]

REPORT_METHODS = ("gsd", "consensus", "pdm", "rsd", "rsd-drafts")
"""The fast methods the report measures, cheapest per pass first (ties go to the earlier one)."""

PAPER_LIKE = {
    "abs KT(greedy, identifier order)": ("kt_identifier_abs", "<=", 0.3),
    "KT(greedy, STD)": ("kt_std", "<=", 0.6),
    "GSD@5": ("gsd@5", "<=", 0.85),
    "PDM@5": ("pdm@5", "<=", 0.90),
    "prefix dependence": ("prefix_dependence", ">=", 0.10),
}
"""Where a target leaves a learned proposer room (issue #21's bounds): fixed orders and one Jacobi step
fall short, and its next item depends on what it has written."""

GOOD_ENOUGH = 0.95
"""Mean KT to the greedy ranking at which a method is recommended at the smallest such budget."""


def ndcg_at_10(ranking: Sequence[str], judged: dict[str, int]) -> float:
    """nDCG@10 with linear gains (trec_eval's and ir_measures' definition); 0 where nothing is relevant."""
    gain = lambda grades: sum(g / np.log2(i + 2) for i, g in enumerate(grades[:10]))  # noqa: E731
    ideal = gain(sorted((g for g in judged.values() if g > 0), reverse=True))
    return gain([max(judged.get(d, 0), 0) for d in ranking]) / ideal if ideal else 0.0


def judged_by_query(qrels: Sequence) -> dict[str, dict[str, int]]:
    """ir_measures qrels as {qid: {docid: grade}}."""
    out: dict[str, dict[str, int]] = {}
    for q in qrels:
        out.setdefault(str(q.query_id), {})[str(q.doc_id)] = int(q.relevance)
    return out


def claim_records(
    target: Target,
    requests: Sequence,
    prompt: PromptConfig,
    budgets: Sequence[int],
    agent: str | None,
    judged: dict[str, dict[str, int]] | None,
    claims: Path | None,
) -> list[dict]:
    """One record per request (``claim_difficulty`` + content figures + nDCG@10), in request order.

    With ``claims``, records are appended there as they come and those of an earlier run with the same
    settings are read back instead of recomputed: a killed run resumes.
    """
    # Weights, not names, key the records: a retrained agent or snapshot under the same name recomputes.
    agent_weights = agent_digest(resolve_agent(agent, target, len(requests[0].candidates))) if requests else None
    key = {"target": target_fingerprint(target), "prompt": [prompt.template, prompt.max_passage_words],
           "budgets": list(budgets), "agent": [agent, agent_weights], "methods": list(REPORT_METHODS)}  # fmt: skip
    done: dict[str, dict] = {}
    if claims is not None and claims.exists():
        for line in claims.read_text().splitlines():
            record = json.loads(line)
            if record.get("key") == key:
                done[record["qid"]] = record
    rank_requests = greedy_ranker(target, prompt, batch=3)
    log = open(claims, "a") if claims is not None else None  # noqa: SIM115 (closed below, whatever happens)
    try:
        for request in tqdm(requests, desc=f"difficulty {target.name}", unit="request"):
            qid = str(request.query.qid)
            if qid in done:
                continue
            session = TargetSession.from_request(target, request, prompt)
            record = {"qid": qid, "key": key, **claim_difficulty(session, 0, budgets, REPORT_METHODS, agent)}
            content = content_figures(rank_requests, [request])
            record["shuffle_kt"], record["shuffled_letters"] = content["shuffle_kt"][0], content["shuffled"][0]
            if judged is not None:
                docids = [str(c.docid) for c in request.candidates]
                record["ndcg@10"] = ndcg_at_10([docids[i] for i in record["greedy"]], judged.get(qid, {}))
                record["ndcg@10 (request order)"] = ndcg_at_10(docids, judged.get(qid, {}))
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            done[qid] = record
    finally:
        if log is not None:
            log.close()
    return [done[str(r.query.qid)] for r in requests]


def _ratio(changed: np.ndarray, compared: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    """Pooled share changed / compared with a bootstrap interval over requests."""
    idx = rng.integers(0, len(changed), size=(n, len(changed)))
    shares = changed[idx].sum(axis=1) / np.maximum(compared[idx].sum(axis=1), 1)
    pooled = changed.sum() / max(compared.sum(), 1)
    return [float(pooled), float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5))]


def summarise(records: list[dict], budgets: Sequence[int], meta: dict) -> dict:
    """Means [95% bootstrap CI] of every figure, per-method rows (KT, passes, tokens per pass, seconds),
    the paper-like checks and the recommendation."""
    rng = np.random.default_rng(0)
    column = lambda name: np.array([r[name] for r in records], dtype=float)  # noqa: E731
    figures = {
        "kt_identifier": bootstrap_mean(column("kt_identifier"), rng),
        "kt_identifier_abs": bootstrap_mean(np.abs(column("kt_identifier")), rng),
        "kt_std": bootstrap_mean(column("kt_std"), rng),
        "prefix_dependence": _ratio(column("prefix_changed"), column("prefix_compared"), rng),
        "shuffle_consistency": bootstrap_mean(column("shuffle_kt"), rng),
        "letter_kt_shuffled": [letter_kt([r["shuffled_letters"] for r in records])] * 3,
    }
    same_k = np.asarray([r["greedy"] for r in records if r["k"] == records[0]["k"]])
    if len(same_k) > 1:
        # A content-blind model writes the same identifiers in the same order whatever the passages.
        first, second = np.triu_indices(len(same_k), k=1)
        figures["kt_between_requests"] = [float(kendall_tau(same_k[first], same_k[second]).mean())] * 3
    if all("ndcg@10" in r for r in records):
        figures["ndcg@10"] = bootstrap_mean(column("ndcg@10"), rng)
        figures["ndcg@10 (request order)"] = bootstrap_mean(column("ndcg@10 (request order)"), rng)
    rows = []
    for t in budgets:
        for m in REPORT_METHODS:
            name = f"{m}@{t}"
            figures[name] = bootstrap_mean(column(name), rng)
            runs = [r["runs"][name] for r in records]
            passes = sum(run["passes"] for run in runs)
            rows.append({
                "method": m, "T": t, "KT": figures[name], "passes": passes / len(runs),
                "tokens_per_pass": sum(run["tokens"] for run in runs) / passes if passes else 0.0,
                "tokens": float(np.mean([run["tokens"] for run in runs])),
                "decode_seconds": float(np.mean([run["seconds"] for run in runs])),
            })  # fmt: skip
    checks = {}
    for label, (name, op, bound) in PAPER_LIKE.items():
        if name in figures:
            value = figures[name][0]
            checks[label] = {
                "value": value,
                "bound": f"{op} {bound}",
                "met": value <= bound if op == "<=" else value >= bound,
            }
    seconds = {what: float(np.mean([r["runs"][what]["seconds"] for r in records])) for what in ("greedy", "std")} | {
        "prefill": float(np.mean([r["prefill_seconds"] for r in records]))
    }
    summary = {**meta, "requests_ranked": len(records), "budgets": list(budgets), "figures": figures, "rows": rows,
               "paper_like": checks, "seconds": seconds}  # fmt: skip
    summary["recommendation"] = recommend(summary)
    return summary


def recommend(summary: dict) -> dict:
    """Which method to use (the highest mean KT at the largest budget; the cheaper per pass on a tie
    within 0.005), the smallest budget where it reaches ``GOOD_ENOUGH``, and whether an agent trained
    on this model has room to pay for its minutes (the paper-like checks all met)."""
    rows = summary["rows"]
    top = max(summary["budgets"])
    at_top = {r["method"]: r["KT"][0] for r in rows if r["T"] == top}
    best_kt = max(at_top.values())
    method = next(m for m in REPORT_METHODS if at_top[m] >= best_kt - 0.005)
    reaching = [r["T"] for r in rows if r["method"] == method and r["KT"][0] >= GOOD_ENOUGH]
    budget = min(reaching) if reaching else top
    checks = summary["paper_like"]
    room = bool(checks) and all(c["met"] for c in checks.values())
    # Training caches the target's greedy ranking and a T = 5 trajectory per training request.
    s = summary["seconds"]
    pass_seconds = np.mean([r["decode_seconds"] / r["passes"] for r in rows if r["method"] == "gsd" and r["passes"]])
    per_100 = 100 * (s["prefill"] + s["greedy"] + 5 * pass_seconds) / 60
    kt = {r["T"]: r["KT"][0] for r in rows if r["method"] == method}
    if best_kt >= GOOD_ENOUGH:
        train = f"no: {method} already reaches KT {best_kt:.3f} at T = {top}"
    elif room:
        train = (
            "yes: the target is paper-like (every check of the difficulty figures met), the room a learned agent fills"
        )
    else:
        unmet = ", ".join(label for label, c in checks.items() if not c["met"])
        train = f"perhaps: KT {best_kt:.3f} at T = {top} leaves room, but the target is not paper-like ({unmet})"
    return {"method": method, "budget": budget, "kt": kt, "train": train, "train_minutes_per_100_requests": per_100}


def markdown(summary: dict) -> str:
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    f, rec = summary["figures"], summary["recommendation"]
    lines = [
        f"# Is RSD worth it on `{summary['target']}`?",
        "",
        f"{summary['requests_ranked']} requests from `{summary['requests']}` (candidates in the file's order), "
        f"passages ≤ {summary['max_passage_words']} words, {summary['device']}, {summary['dtype']}; RSD's agent: "
        f"`{summary['agent']}`. KT = Kendall tau to the target's own greedy ranking, mean [95% bootstrap CI]; "
        "tokens/pass: tokens fed in a pass, every draft it verifies counted (a GPU at batch 1 pays about one decode step for a "
        "pass of a few hundred; a CPU pays per token).",
        "",
        "| method | T | KT | passes | tokens/pass | tokens | decode s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['method']} | {r['T']} | {fmt(r['KT'])} | {r['passes']:.2f} | {r['tokens_per_pass']:.0f} | "
            f"{r['tokens']:.0f} | {r['decode_seconds']:.3f} |"
        )
    lines += [
        "",
        "| target figure | value |",
        "|---|---|",
        f"| KT(greedy, identifier order) | {fmt(f['kt_identifier'])} |",
        f"| KT(greedy, STD) | {fmt(f['kt_std'])} |",
        f"| prefix dependence (later greedy items changed by swapping slots "
        f"{', '.join(f'{a}↔{b}' for a, b in SWAPS)}) | {fmt(f['prefix_dependence'])} |",
        f"| shuffle consistency (KT between its rankings of two seeded shuffles, as documents; 1 = reads) "
        f"| {fmt(f['shuffle_consistency'])} |",
        f"| KT between requests' rankings of shuffled candidates, as identifiers (0 = content-driven) "
        f"| {f['letter_kt_shuffled'][0]:.3f} |",
    ]
    if "kt_between_requests" in f:
        lines.append(
            "| KT between requests' greedy rankings (same identifiers, other passages; 1 = content-blind) "
            f"| {f['kt_between_requests'][0]:.3f} |"
        )
    if "ndcg@10" in f:
        lines.append(f"| nDCG@10 of the greedy ranking | {fmt(f['ndcg@10'])} |")
        lines.append(f"| nDCG@10 of the request order | {fmt(f['ndcg@10 (request order)'])} |")
    s = summary["seconds"]
    lines.append(f"| seconds: prefill, greedy decoding (K - 1 steps) | {s['prefill']:.3f}, {s['greedy']:.3f} |")
    lines += ["", "| paper-like when | bound | value | met |", "|---|---|---|---|"]
    lines += [
        f"| {label} | {c['bound']} | {c['value']:.3f} | {c['met']} |" for label, c in summary["paper_like"].items()
    ]
    kts = ", ".join(f"{v:.3f} at T = {t}" for t, v in sorted(rec["kt"].items()))
    lines += [
        "",
        f"**Use `--method {rec['method']} --budget {rec['budget']}`** (KT {kts}). Train an agent for this model? "
        f"{rec['train']} (caching the target for `rsd-rerank train` takes about "
        f"{rec['train_minutes_per_100_requests']:.1f} minutes per 100 training requests here).",
    ]
    return "\n".join(lines) + "\n"
