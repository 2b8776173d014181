"""BM25 → rerank → TREC run → ir-measures: the work behind ``rsd-rerank pipeline`` and ``rsd-rerank compare``.

``pipeline`` reranks the BM25 top k of every query (RankLLM sliding windows when k exceeds one
window), writes the run atomically after every query (``resume`` continues a run) and evaluates it
next to BM25. ``compare`` runs several decoders on the same candidate lists with one prefill per
query: fidelity to the target's greedy ranking, nDCG@10, passes and seconds, plus RankZephyr-style
free generation (parsed and repaired by RankLLM's ``receive_permutation``) and FIRST-style
first-identifier ranking.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rsd_rerank.decoding import BUDGETED, DecodingConfig, initial_ranking, rank
from rsd_rerank.metrics import footrule, kemeny, kendall_tau, spearman_rho
from rsd_rerank.prompt import PromptConfig, chat_ids, check_candidates, ranking_text
from rsd_rerank.runs import atomic_write, rerank_request
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target

__all__ = ["COMPARE_METHODS", "candidate_requests", "compare", "evaluate", "pipeline"]

log = logging.getLogger(__name__)

COMPARE_METHODS = ("generate", "first", "std", "gsd", "consensus", "rsd", "greedy")
"""``generate``: free token-by-token generation (RankZephyr-style), parsed by RankLLM;
``first``: FIRST-style, items by their first-identifier logit (on one LLM the same order as ``std``,
which is the decoder's zero-pass path); the rest as in ``rsd_rerank.decoding.METHODS``."""


def _measures():
    import ir_measures

    return [ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 20]


def evaluate(
    qrels: list | None, run: dict[str, dict[str, float]], measures: list | None = None
) -> tuple[dict[str, float], list[str]] | None:
    """Means of ``measures`` (default nDCG@10, MRR@10 as RR@10, R@20) over the run's judged queries,
    and the qids left out because the qrels judge nothing for them; None without qrels."""
    import ir_measures

    if qrels is None:
        return None
    judged_qids = {q.query_id for q in qrels}
    unjudged = sorted(q for q in run if q not in judged_qids)
    judged = {q: docs for q, docs in run.items() if q in judged_qids}
    if not judged:
        return {}, unjudged
    # Only the run's queries: qrels of queries not run (e.g. beyond --queries) would count as zeros.
    values = ir_measures.calc_aggregate(measures or _measures(), [q for q in qrels if q.query_id in judged], judged)
    return {str(m): float(v) for m, v in values.items()}, unjudged


def candidate_requests(index: str | os.PathLike, topics: dict[str, str], hits: int, depth: int):
    """BM25 runs ``{qid: [(docid, score)…]}`` and RankLLM requests of each query's top ``depth`` hits."""
    from dacite import from_dict
    from rank_llm.data import Request

    from rsd_rerank.integrations.pyserini import bm25, request_dicts

    runs = bm25(index, topics, hits)
    empty = [qid for qid, found in runs.items() if not found]
    if empty:
        log.warning("%d queries have no BM25 hits and are left out: %s", len(empty), ", ".join(empty[:10]))
    return runs, [from_dict(data_class=Request, data=r) for r in request_dicts(index, runs, topics, depth)]


def _read_run(path: Path) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            lines.setdefault(line.split()[0], []).append(line)
    return lines


def _as_run(lines: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {q: {ln.split()[2]: float(ln.split()[4]) for ln in ls} for q, ls in lines.items()}


@dataclass(frozen=True)
class PipelineResult:
    """What ``pipeline`` did: queries reranked now and before (resume), and metrics next to BM25."""

    reranked: int
    resumed: int
    metrics: dict[str, dict[str, float]] | None
    unjudged: list[str]


def pipeline(
    target: Target,
    index: str | os.PathLike,
    topics: dict[str, str],
    qrels: list | None,
    output: str | os.PathLike,
    decoding: DecodingConfig,
    prompt: PromptConfig,
    hits: int = 100,
    rerank_top: int = 20,
    resume: bool = False,
) -> PipelineResult:
    """Retrieve, rerank the top ``rerank_top`` of each query, write the run after every query.

    The run keeps all ``hits`` per query: the reranked top k, then BM25's order below it.

    Raises:
        ValueError: ``output`` exists and ``resume`` is off (nothing written is ever overwritten
            silently), or ``rerank_top`` < 1.
    """
    from rsd_rerank.integrations.pyserini import bm25
    from rsd_rerank.integrations.rank_llm import RSDReranker

    output = Path(output)
    if rerank_top < 1 or hits < rerank_top:
        raise ValueError(f"need 1 <= --rerank-top <= --hits, got {rerank_top} and {hits}")
    if output.exists() and not resume:
        raise ValueError(f"{output} exists; pass --resume to continue it or choose another --output")
    done = _read_run(output) if output.exists() else {}
    todo = {q: t for q, t in topics.items() if q not in done}
    runs, requests = candidate_requests(index, todo, hits, rerank_top) if todo else ({}, [])
    tag = decoding.run_tag
    windows = None
    if rerank_top > 20:  # RankLLM's sliding windows (20, stride 10), as RankLLM users run them
        windows = RSDReranker(
            target,
            method=decoding.method,
            budget=decoding.budget,
            agent=decoding.agent,
            context_size=prompt.context_size,
            max_passage_words=prompt.max_passage_words,
            prompt_template_path=prompt.template,
        )
    lines = dict(done)
    for request in tqdm(requests, desc=f"{decoding.method}@{decoding.budget}", unit="query"):
        qid = str(request.query.qid)
        if windows is None:
            order = rerank_request(target, request, decoding, prompt).docids
        else:
            order = [c.docid for c in windows.rerank_batch([request], rank_end=rerank_top)[0].candidates]
        reranked = set(order)
        full = order + [d for d, _ in runs[qid] if d not in reranked]
        lines[qid] = [f"{qid} Q0 {d} {r} {len(full) - r + 1} {tag}" for r, d in enumerate(full, start=1)]
        atomic_write(output, "".join(ln + "\n" for q in lines for ln in lines[q]))
    metrics, unjudged = None, []
    evaluated = evaluate(qrels, _as_run(lines))
    if evaluated is not None:
        reranked_metrics, unjudged = evaluated
        # BM25 beside it over the same queries; those resumed from the run file are searched again.
        bm25_runs = {**(bm25(index, {q: topics[q] for q in done if q in topics}, hits) if done else {}), **runs}
        bm25_metrics, _ = evaluate(qrels, {q: dict(found) for q, found in bm25_runs.items() if q in lines})
        metrics = {"BM25": bm25_metrics, tag: reranked_metrics}
    return PipelineResult(len(requests), len(done), metrics, unjudged)


# -- compare -----------------------------------------------------------------------------------


def _generate(target: Target, session: TargetSession) -> tuple[list[int], bool, float]:
    """RankZephyr-style: free greedy generation from the prompt, parsed and repaired by RankLLM.

    Returns the ranking, whether RankLLM had to repair it (missing, unknown or repeated
    identifiers), and the seconds generation took end to end (its own prefill included).
    """
    import torch
    from rank_llm.data import Candidate, Query, Result
    from rank_llm.rerank.listwise.listwise_rankllm import ALPH_START_IDX, clean_ranking_response

    k = session.k
    ids = torch.tensor([chat_ids(target.tokenizer, session.prompt.messages)], device=target.model.device)
    budget = len(target.tokenizer.encode(ranking_text(range(k)), add_special_tokens=False)) + 8
    start = time.perf_counter()
    with torch.inference_mode():
        out = target.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=target.tokenizer.pad_token_id or target.tokenizer.eos_token_id,
        )
    seconds = time.perf_counter() - start
    text = target.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    parsed = [int(x) - 1 for x in clean_ranking_response(text, use_alpha=True, alph_start_idx=ALPH_START_IDX).split()]
    needed_repair = sorted(set(parsed)) != list(range(k)) or len(parsed) != k
    # RankLLM's own repair: the reranker object is only a carrier of its receive_permutation.
    result = Result(Query("", ""), [Candidate(docid=str(i), score=float(k - i), doc={}) for i in range(k)])
    repaired = _permutation_receiver().receive_permutation(result, text, 0, k)
    return [int(c.docid) for c in repaired.candidates], needed_repair, seconds


def _permutation_receiver():
    from rsd_rerank.integrations.rank_llm import RSDReranker

    # receive_permutation reads only `_use_alpha`; no model is needed to parse a string.
    receiver = object.__new__(RSDReranker)
    receiver._use_alpha = True
    return receiver


def compare(
    target: Target,
    requests: list,
    qrels: list | None,
    methods: Sequence[str],
    budgets: Sequence[int],
    prompt: PromptConfig,
    agent: str | None = None,
) -> list[dict]:
    """One record per (query, method, budget): ranking, fidelity to the greedy target, passes, seconds."""
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(COMPARE_METHODS)}")
    records = []
    for request in tqdm(requests, desc="compare", unit="query"):
        records += _compare_query(target, request, methods, budgets, prompt, agent)
    return records


def _compare_query(target, request, methods, budgets, prompt, agent) -> list[dict]:
    docids = [str(c.docid) for c in request.candidates]
    check_candidates(docids)
    session = TargetSession.from_request(target, request, prompt)
    start = time.perf_counter()
    greedy = session.greedy_ranking()
    greedy_seconds = time.perf_counter() - start
    records = []

    def add(method, budget, ranking, passes, decode_seconds, e2e=None, **extra):
        records.append(
            {
                "qid": str(request.query.qid),
                "method": method,
                "T": budget,
                "ranking": [docids[i] for i in ranking],
                "items": list(ranking),
                "target": greedy,
                "passes": passes,
                "prompt_tokens": session.prompt_tokens,
                "prefill_seconds": session.prefill_seconds,
                "decode_seconds": decode_seconds,
                "e2e_seconds": e2e if e2e is not None else session.prefill_seconds + decode_seconds,
                **extra,
            }
        )

    add("bm25", None, list(range(len(docids))), 0, 0.0, e2e=0.0)
    for method in methods:
        if method == "greedy":
            add(method, None, greedy, session.k - 1, greedy_seconds)
        elif method in ("std", "first"):
            start = time.perf_counter()
            order = initial_ranking(session.first_slot()).tolist()
            add(method, 0, order, 0, time.perf_counter() - start)
        elif method == "generate":
            order, repaired, seconds = _generate(target, session)
            add(method, None, order, None, seconds - session.prefill_seconds, e2e=seconds, parse_failure=repaired)
        else:
            for t in budgets:
                session.forget()  # each run pays its own passes, as it would alone
                decoded = rank(session, DecodingConfig(method, t, agent))
                add(method, t, decoded.ranking, decoded.trace.passes, decoded.trace.decode_seconds)
    return records


def summarise(records: list[dict], qrels: list | None) -> list[dict]:
    """Rows per (method, T): nDCG@10, KT/SR/FD/KD to the greedy target, passes, seconds (median, p90)."""
    rows = []
    keys = list(dict.fromkeys((r["method"], r["T"]) for r in records))
    for method, t in keys:
        group = [r for r in records if r["method"] == method and r["T"] == t]
        pred = np.array([r["items"] for r in group])
        target = np.array([r["target"] for r in group])
        row = {"method": method, "T": t, "queries": len(group)}
        evaluated = evaluate(
            qrels, {r["qid"]: {d: float(len(r["ranking"]) - i) for i, d in enumerate(r["ranking"])} for r in group}
        )
        row["nDCG@10"] = evaluated[0].get("nDCG@10") if evaluated else None
        for name, fn in (("KT", kendall_tau), ("SR", spearman_rho), ("FD", footrule), ("KD", kemeny)):
            row[name] = float(fn(pred, target).mean())
        passes = [r["passes"] for r in group if r["passes"] is not None]
        row["passes"] = float(np.mean(passes)) if passes else None
        for what in ("prefill_seconds", "decode_seconds", "e2e_seconds"):
            values = np.array([r[what] for r in group])
            row[what] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
        if method == "generate":
            row["parse_failures"] = int(sum(r["parse_failure"] for r in group))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One line per (method, T); seconds are medians per query (p90 in the JSON)."""

    def label(r):
        return r["method"] + (f"@{r['T']}" if r["method"] in BUDGETED else "")

    out = [
        "| method | nDCG@10 | KT | SR | FD | KD | passes | prefill s | decode s | end-to-end s | parse failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ndcg = "–" if r["nDCG@10"] is None else f"{r['nDCG@10']:.4f}"
        passes = "–" if r["passes"] is None else f"{r['passes']:.1f}"
        pf = str(r.get("parse_failures", "–"))
        if r["method"] == "bm25":
            out.append(
                f"| bm25 | {ndcg} | {r['KT']:.3f} | {r['SR']:.3f} | {r['FD']:.1f} | {r['KD']:.1f} | – | – | – | – | – |"
            )
            continue
        out.append(
            f"| {label(r)} | {ndcg} | {r['KT']:.3f} | {r['SR']:.3f} | {r['FD']:.1f} | {r['KD']:.1f} | {passes} | "
            f"{r['prefill_seconds']['median']:.2f} | {r['decode_seconds']['median']:.2f} | "
            f"{r['e2e_seconds']['median']:.2f} | {pf} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """Budget vs KT and budget vs decode seconds (PNG); unbudgeted methods as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kt, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    budgeted = [r for r in rows if r["method"] in BUDGETED]
    for method in dict.fromkeys(r["method"] for r in budgeted):
        pts = sorted((r["T"], r["KT"], r["decode_seconds"]["median"]) for r in budgeted if r["method"] == method)
        ax_kt.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax_s.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=method)
    for r in rows:
        if r["method"] not in BUDGETED and r["method"] != "bm25":
            ax_kt.axhline(r["KT"], linestyle="--", linewidth=1, label=r["method"], color=f"C{len(ax_kt.lines) % 10}")
            ax_s.axhline(
                r["decode_seconds"]["median"],
                linestyle="--",
                linewidth=1,
                label=r["method"],
                color=f"C{len(ax_s.lines) % 10}",
            )
    ax_kt.set(xlabel="budget T (LLM passes)", ylabel="Kendall tau to greedy target")
    ax_s.set(xlabel="budget T (LLM passes)", ylabel="decode seconds per query (median)")
    ax_kt.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_comparison(stem: str | os.PathLike, meta: dict, rows: list[dict], records: list[dict]) -> str:
    """``stem``.json (rows, per-query records, settings), .md and .png; returns the Markdown table."""
    stem = Path(stem)
    table = markdown_table(rows)
    atomic_write(stem.with_suffix(".json"), json.dumps({**meta, "rows": rows, "records": records}, indent=1) + "\n")
    atomic_write(
        stem.with_suffix(".md"), f"# Comparison on {meta['queries']} queries, target {meta['target']}\n\n" + table
    )
    plot(rows, stem.with_suffix(".png"))
    return table
