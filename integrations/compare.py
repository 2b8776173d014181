"""Every decoder on the same candidate lists, one prefill per query: the work behind ``rsd-rerank compare``.

Fidelity to the target's greedy ranking, nDCG@10, passes and seconds, plus RankZephyr-style free
generation (parsed and repaired by RankLLM's ``receive_permutation``) and FIRST-style
first-identifier ranking. Tables and plots of the result are in ``report``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from rsd_rerank.integrations.measures import evaluate
from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.metrics import similarity
from rsd_rerank.prompt import PromptConfig, check_candidates, numeric_identifiers, request_prompts
from rsd_rerank.registry import BUDGETED, COMPARE_METHODS
from rsd_rerank.runs import BatchConfig
from rsd_rerank.session import TargetSession, batched_sessions
from rsd_rerank.targets import Target

__all__ = ["compare", "parse_generation", "summarise"]


def parse_generation(text: str, k: int, numeric: bool = False) -> tuple[list[int], bool]:
    """The ranking RankLLM reads from generated ``text`` over ``k`` items (identifiers numbers or
    letters), and whether RankLLM had to repair it (missing, unknown or repeated identifiers)."""
    from rank_llm.data import Candidate, Query, Result
    from rank_llm.rerank.listwise.listwise_rankllm import ALPH_START_IDX, clean_ranking_response

    cleaned = clean_ranking_response(text, use_alpha=not numeric, alph_start_idx=ALPH_START_IDX)
    parsed = [int(x) - 1 for x in cleaned.split()]
    needed_repair = sorted(set(parsed)) != list(range(k)) or len(parsed) != k
    # RankLLM's own repair: the reranker object is only a carrier of its receive_permutation.
    result = Result(Query("", ""), [Candidate(docid=str(i), score=float(k - i), doc={}) for i in range(k)])
    repaired = _permutation_receiver(numeric).receive_permutation(result, text, 0, k)
    return [int(c.docid) for c in repaired.candidates], needed_repair


def _permutation_receiver(numeric: bool):
    from rsd_rerank.integrations.rank_llm import RSDReranker

    # receive_permutation reads only `_use_alpha`; no model is needed to parse a string.
    receiver = object.__new__(RSDReranker)
    receiver._use_alpha = not numeric
    return receiver


def compare(
    target: Target,
    requests: list,
    qrels: list | None,
    methods: Sequence[str],
    budgets: Sequence[int],
    prompt: PromptConfig,
    companions: Mapping[str, str] | None = None,
    batching: BatchConfig = BatchConfig(),
) -> list[dict]:
    """One record per (query, method, budget): ranking, fidelity to the greedy target, passes, seconds.

    ``companions`` maps a method to what it needs beyond the target: ``rsd``'s agent, a baseline's
    heads, fine-tuned ranker or drafter (``DecodingConfig.agent`` / ``ranker``); a method missing
    there takes its default.

    With ``batching.batch_size`` > 1 the queries of a batch share every forward, and each query's
    seconds are its share of the batch's (the batch's seconds / its size): throughput, not latency.
    """
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(COMPARE_METHODS)}")
    numeric = numeric_identifiers(prompt.template)
    for request in requests:
        check_candidates([str(c.docid) for c in request.candidates], numeric=numeric)
    prompts = request_prompts(target.tokenizer, requests, prompt, target.max_positions)
    records = []
    bar = tqdm(total=len(requests), desc="compare", unit="query")
    for group, session in batched_sessions(target, prompts, batching):
        records += _compare_batch(session, [requests[i] for i in group], methods, budgets, dict(companions or {}))
        bar.update(len(group))
    bar.close()
    return records


def _decoding(method: str, budget: int, companions: Mapping[str, str]) -> DecodingConfig:
    """The decoder a compare row runs (``first`` is ``std`` on the same LLM)."""
    if method == "first":
        return DecodingConfig("std", budget)
    if COMPARE_METHODS[method].companion == "agent":  # rsd, rsd-drafts: the one --agent
        return DecodingConfig(method, budget, agent=companions.get("rsd"))
    return DecodingConfig(method, budget, ranker=companions.get(method))


def _compare_batch(session: TargetSession, requests: list, methods, budgets, companions) -> list[dict]:
    n = len(requests)
    greedy_decoded = rank_many(session, DecodingConfig("greedy"))  # the target, computed first: every row needs it
    records: list[list[dict]] = [[] for _ in range(n)]  # per query, in method order

    def add(q, method, budget, ranking, passes, decode_seconds, e2e=None, **extra):
        docids = [str(c.docid) for c in requests[q].candidates]
        prefill = session.prefill_seconds / n
        records[q].append(
            {
                "qid": str(requests[q].query.qid),
                "method": method,
                "T": budget,
                "ranking": [docids[i] for i in ranking],
                "items": list(ranking),
                "target": greedy_decoded[q].ranking,
                "passes": passes,
                "prompt_tokens": session.prompt_lengths[q],
                "batch": n,
                "prefill_seconds": prefill,
                "decode_seconds": decode_seconds / n,
                "e2e_seconds": e2e / n if e2e is not None else prefill + decode_seconds / n,
                **extra,
            }
        )

    for q in range(n):
        add(q, "bm25", None, list(range(session.ks[q])), 0, 0.0, e2e=0.0)
    for method in methods:
        if method == "greedy":
            for q, d in greedy_decoded.items():
                add(q, method, None, d.ranking, d.trace.passes, d.trace.decode_seconds)
        elif method == "generate":
            for q, generation in session.generate_many().items():
                order, repaired = parse_generation(generation.text, session.ks[q], session.prompts[q].layout.numeric)
                seconds = generation.seconds
                add(
                    q, method, None, order, None, seconds - session.prefill_seconds, e2e=seconds, parse_failure=repaired
                )
        else:
            # std, first and the fine-tuned rankers read a prefill; the rest verify under each budget.
            for t in budgets if method in BUDGETED else [0]:
                session.forget()  # each run pays its own passes, as it would alone
                decoded = rank_many(session, _decoding(method, t, companions))
                for q, d in decoded.items():
                    add(q, method, t, d.ranking, d.trace.passes, d.trace.decode_seconds)
    return [record for query in records for record in query]


def summarise(records: list[dict], qrels: list | None, measures: Sequence | None = None) -> list[dict]:
    """Rows per (method, T): ``measures`` (ir_measures, default nDCG@10, RR@10, R@20) under ``retrieval``,
    KT/SR/FD/KD to the greedy target, passes, seconds (median, p90)."""
    rows = []
    keys = list(dict.fromkeys((r["method"], r["T"]) for r in records))
    for method, t in keys:
        group = [r for r in records if r["method"] == method and r["T"] == t]
        pred = np.array([r["items"] for r in group])
        target = np.array([r["target"] for r in group])
        row = {"method": method, "T": t, "queries": len(group)}
        evaluated = evaluate(
            qrels,
            {r["qid"]: {d: float(len(r["ranking"]) - i) for i, d in enumerate(r["ranking"])} for r in group},
            list(measures) if measures else None,
        )
        row["retrieval"] = evaluated[0] if evaluated else {}
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
