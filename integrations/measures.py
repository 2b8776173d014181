"""ir_measures over a run's judged queries: the retrieval metrics ``retrieve``, ``pipeline`` and ``compare`` print."""

from __future__ import annotations

__all__ = ["default_measures", "evaluate"]


def default_measures() -> list:
    """nDCG@10, MRR@10 (as RR@10) and R@20."""
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
    measures = measures or default_measures()
    values = ir_measures.calc_aggregate(measures, [q for q in qrels if q.query_id in judged], judged)
    # In the order asked for, whatever order the backend returns: tables get fixed columns.
    return {str(m): float(values[m]) for m in measures}, unjudged
