"""Every decoder on the same candidate lists, one prefill per query: the work behind ``rsd-rerank compare``.

Fidelity to the target's greedy ranking, nDCG@10, passes and seconds, plus RankZephyr-style free
generation (parsed and repaired by RankLLM's ``receive_permutation``) and FIRST-style
first-identifier ranking. Tables and plots of the result are in ``report``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from rsd_rerank.integrations.measures import evaluate
from rsd_rerank.methods import DecodingConfig, rank
from rsd_rerank.metrics import similarity
from rsd_rerank.prompt import PromptConfig, check_candidates
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target

__all__ = ["COMPARE_METHODS", "compare", "parse_generation", "summarise"]

COMPARE_METHODS = ("generate", "first", "std", "gsd", "consensus", "rsd", "greedy")
"""``generate``: free token-by-token generation (RankZephyr-style), parsed by RankLLM;
``first``: FIRST-style, items by their first-identifier logit (on one LLM the same order as ``std``,
which is the decoder's zero-pass path); the rest as in ``rsd_rerank.methods.METHODS``."""


def parse_generation(text: str, k: int) -> tuple[list[int], bool]:
    """The ranking RankLLM reads from generated ``text`` over ``k`` items, and whether RankLLM had to
    repair it (missing, unknown or repeated identifiers)."""
    from rank_llm.data import Candidate, Query, Result
    from rank_llm.rerank.listwise.listwise_rankllm import ALPH_START_IDX, clean_ranking_response

    parsed = [int(x) - 1 for x in clean_ranking_response(text, use_alpha=True, alph_start_idx=ALPH_START_IDX).split()]
    needed_repair = sorted(set(parsed)) != list(range(k)) or len(parsed) != k
    # RankLLM's own repair: the reranker object is only a carrier of its receive_permutation.
    result = Result(Query("", ""), [Candidate(docid=str(i), score=float(k - i), doc={}) for i in range(k)])
    repaired = _permutation_receiver().receive_permutation(result, text, 0, k)
    return [int(c.docid) for c in repaired.candidates], needed_repair


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
    greedy_decoded = rank(session, DecodingConfig("greedy"))  # the target, computed first: every row needs it
    greedy = greedy_decoded.ranking
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
            add(method, None, greedy, greedy_decoded.trace.passes, greedy_decoded.trace.decode_seconds)
        elif method == "generate":
            generation = session.generate()
            order, repaired = parse_generation(generation.text, session.k)
            add(
                method,
                None,
                order,
                None,
                generation.seconds - session.prefill_seconds,
                e2e=generation.seconds,
                parse_failure=repaired,
            )
        else:
            # std and first (the same order on one LLM) read the prefill; the rest verify under each budget.
            for t in [0] if method in ("std", "first") else budgets:
                session.forget()  # each run pays its own passes, as it would alone
                decoded = rank(session, DecodingConfig("std" if method == "first" else method, t, agent))
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
        row.update(similarity(pred, target))
        passes = [r["passes"] for r in group if r["passes"] is not None]
        row["passes"] = float(np.mean(passes)) if passes else None
        for what in ("prefill_seconds", "decode_seconds", "e2e_seconds"):
            values = np.array([r[what] for r in group])
            row[what] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
        if method == "generate":
            row["parse_failures"] = int(sum(r["parse_failure"] for r in group))
        rows.append(row)
    return rows
