"""The picture of a fidelity table: KT to the target's greedy ranking against LLM passes, one line per
method with its 95% bootstrap band, so that which method buys the most fidelity per pass shows at a glance.

    .venv/bin/python benchmarks/plot_fidelity.py benchmarks/results/fidelity-smollm2-reranker.json \\
        --out benchmarks/results/fidelity-smollm2-reranker.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summary", type=Path, help="a benchmarks/fidelity.py JSON")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    by_method: dict[str, list[dict]] = {}
    for row in summary["rows"]:
        by_method.setdefault(row["method"], []).append(row)
    std = by_method.pop("std", [None])[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(
        color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]
    )  # 20 distinct colours: every method its own
    for method, rows in by_method.items():
        rows = sorted(rows, key=lambda r: r["T"])
        if len(rows) == 1:  # a budget-free method: one point at the passes it used
            r = rows[0]
            ax.errorbar(
                [r["passes"]],
                [r["KT"][0]],
                yerr=[[r["KT"][0] - r["KT"][1]], [r["KT"][2] - r["KT"][0]]],
                fmt="s",
                capsize=3,
                label=method,
            )
            continue
        ts = [0, *[r["T"] for r in rows]] if std else [r["T"] for r in rows]
        mean = ([std["KT"][0]] if std else []) + [r["KT"][0] for r in rows]
        low = ([std["KT"][1]] if std else []) + [r["KT"][1] for r in rows]
        high = ([std["KT"][2]] if std else []) + [r["KT"][2] for r in rows]
        (line,) = ax.plot(ts, mean, marker="o", label=method)
        ax.fill_between(ts, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("T: LLM passes after the prompt (0 = STD, the first-slot order)")
    ax.set_ylabel("Kendall tau to the target's greedy ranking")
    ax.set_title(f"{summary['target']}: {summary['claims']} SciFact test claims, K = {summary['k']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
