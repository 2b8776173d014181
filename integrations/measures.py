"""ir_measures over a run's judged queries: the retrieval metrics ``retrieve``, ``pipeline`` and ``compare`` print."""

from __future__ import annotations

__all__ = ["default_measures", "evaluate", "parse_measures"]


def default_measures() -> list:
    """nDCG@10, MRR@10 (as RR@10) and R@20."""
    import ir_measures

    return [ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 20]


def parse_measures(text: str) -> list:
    """ir_measures measures from their names, separated by spaces or commas (``"nDCG@10 RR@10 R@100"``).

    Raises:
        ValueError: a name ir_measures does not know (it is named).
    """
    import ir_measures

    names = [n for n in text.replace(",", " ").split() if n]
    if not names:
        raise ValueError(f"--measures {text!r} names no measure")
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"--measures: {name!r} is not an ir_measures measure (e.g. nDCG@10, RR@10, R@100, AP)"
            ) from err
    return measures


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
