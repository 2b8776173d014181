"""The comparison's Markdown table, its plot and its files (``.json``, ``.md``, ``.png``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rsd_rerank.files import atomic_write, replacing
from rsd_rerank.metrics import MEASURES
from rsd_rerank.registry import BUDGETED

__all__ = ["figure", "markdown_table", "plot", "write_comparison"]


def _measure_text(name: str, value: float) -> str:
    # Correlations in [-1, 1] get three decimals; distances (pairs, slots) one.
    return f"{value:.3f}" if MEASURES[name].higher_is_better else f"{value:.1f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per (method, T); seconds are medians per query (p90 in the JSON)."""

    retrieval = list(dict.fromkeys(name for r in rows for name in r["retrieval"]))
    columns = ["method", *retrieval, *MEASURES, "passes", "prefill s", "decode s", "end-to-end s", "parse failures"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        ir = [f"{r['retrieval'][n]:.4f}" if r["retrieval"].get(n) is not None else "–" for n in retrieval]
        fidelity = [_measure_text(name, r[name]) for name in MEASURES]
        if r["method"] == "bm25":
            cells = ["bm25", *ir, *fidelity, "–", "–", "–", "–", "–"]
        else:
            cells = [
                _label(r),
                *ir,
                *fidelity,
                "–" if r["passes"] is None else f"{r['passes']:.1f}",
                f"{r['prefill_seconds']['median']:.2f}",
                f"{r['decode_seconds']['median']:.2f}",
                f"{r['e2e_seconds']['median']:.2f}",
                str(r.get("parse_failures", "–")),
            ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _label(r: dict) -> str:
    return r["method"] + (f"@{r['T']}" if r["method"] in BUDGETED else "")


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """``figure(rows)`` as a PNG at ``path``, written atomically."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def figure(rows: list[dict]):
    """Budget vs KT and budget vs decode seconds; unbudgeted methods as horizontal lines. With a single
    budget a budget axis would be one point wide: then bars, one per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kt, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    shown = [r for r in rows if r["method"] != "bm25"]
    if len({r["T"] for r in shown if r["method"] in BUDGETED}) <= 1:
        labels = [_label(r) for r in shown]
        colors = [f"C{i % 10}" for i in range(len(shown))]
        ax_kt.bar(labels, [r["KT"] for r in shown], color=colors)
        ax_s.bar(labels, [r["decode_seconds"]["median"] for r in shown], color=colors)
        ax_kt.set(ylabel="Kendall tau to greedy target", ylim=(min(0.0, *(r["KT"] for r in shown)), 1.0))
        ax_s.set(ylabel="decode seconds per query (median)")
        for ax in (ax_kt, ax_s):
            ax.tick_params(axis="x", labelrotation=45)
        fig.tight_layout()
        return fig
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
    return fig


def write_comparison(stem: str | os.PathLike, meta: dict, rows: list[dict], records: list[dict]) -> str:
    """``stem``.json (rows, per-query records, settings), .md and .png; returns the Markdown table."""
    stem = Path(stem)
    table = markdown_table(rows)
    atomic_write(stem.with_suffix(".json"), json.dumps({**meta, "rows": rows, "records": records}, indent=1) + "\n")
    atomic_write(
        stem.with_suffix(".md"),
        f"# Comparison on {meta['queries']} queries, target {meta['target']} ({meta['dtype']})\n\n" + table,
    )
    plot(rows, stem.with_suffix(".png"))
    return table
