"""The paper's Table 1 in our setting: every method at T = 5 on each target, beside the paper's own
Llama-3.2-3B (MS MARCO, K = 20) numbers, from the committed ``benchmarks/fidelity.py --baselines`` results.

    .venv/bin/python benchmarks/table1.py benchmarks/results/baselines-random-llama.json \\
        benchmarks/results/baselines-smollm2.json --out benchmarks/results/table1

Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rsd_rerank.files import atomic_write, stem_file

BUDGET = 5
ROWS = (
    ("STD", "std"),
    ("FIRST (fine-tuned on the target)", "first-ft"),
    ("RankZephyr (fine-tuned on the target)", "rankzephyr-ft"),
    ("SDM", "sdm"),
    ("Blockwise", "blockwise"),
    ("Medusa", "medusa"),
    ("PDM (Jacobi)", "pdm"),
    ("GSD", "gsd"),
    ("FIRST + SD", "first-sd"),
    ("consensus (ours, no learning)", "consensus"),
    ("RSD (bundled agent)", "rsd"),
)
PAPER = {
    "std": {"KT": 0.304},
    "first-ft": {"KT": 0.368},
    "rankzephyr-ft": {"KT": 0.269},
    "blockwise": {"KT": 0.580},
    "gsd": {"KT": 0.636},
    "rsd": {"KT": 0.717, "SR": 0.837, "FD": 41.0, "KD": 26.9},
}
"""Llama-3.2-3B-Instruct on MS MARCO, T = 5 (``shared/rsd-paper.md``); the rest are not in our summary of the paper."""


def _row(summary: dict, method: str) -> dict | None:
    """The method's row at T = 5 (or at 0 for the methods with no pass), None where it did not run."""
    rows = {(r["method"], r["T"]): r for r in summary["rows"]}
    return rows.get((method, BUDGET)) or rows.get((method, 0))


def _name(summary: dict) -> str:
    return summary["target"].split("(")[0]


def table(summaries: list[dict]) -> tuple[str, dict]:
    head = (
        "| method | "
        + " | ".join(f"{_name(s)} KT | SR | FD | KD | tokens/pass | decode s" for s in summaries)
        + " | paper KT | paper SR | paper FD | paper KD |"
    )
    cells = 6 * len(summaries) + 4
    lines = [head, "|---|" + "---|" * cells]
    data = {}
    for label, method in ROWS:
        parts, data[method] = [], {}
        for s in summaries:
            r = _row(s, method)
            data[method][_name(s)] = r
            if r is None:
                parts += ["—"] * 6
                continue
            parts += [
                f"{r['KT'][0]:.3f}",
                f"{r['SR'][0]:.3f}",
                f"{r['FD'][0]:.1f}",
                f"{r['KD'][0]:.1f}",
                f"{r['tokens_per_pass']:.0f}",
                f"{r['decode_seconds']:.3f}",
            ]
        paper = PAPER.get(method, {})
        parts += [
            f"{paper[m]:.{3 if m in ('KT', 'SR') else 1}f}" if m in paper else "—" for m in ("KT", "SR", "FD", "KD")
        ]
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n", data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="fidelity.py --baselines JSON files, one per target")
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .md and .json")
    args = p.parse_args(argv)
    summaries = [json.loads(path.read_text()) for path in args.results]
    md, data = table(summaries)
    difficulty = "; ".join(
        f"{_name(s)}: KT(greedy, identifier order) {s['difficulty']['KT_greedy_vs_identifier_order'][0]:.3f}, "
        f"KT(greedy, STD) {s['difficulty']['KT_greedy_vs_std'][0]:.3f}, {s['claims']} claims"
        for s in summaries
    )
    text = (
        f"# Table 1 in our setting: every method at T = {BUDGET}\n\n"
        f"Target difficulty: {difficulty}. Methods without a pass (STD, the fine-tuned rankers) at T = 0. "
        "tokens/pass: tokens fed per verification pass; decode s: seconds per query after the prompt "
        "(2 CPU cores, fp32). Paper: Llama-3.2-3B-Instruct, MS MARCO, K = 20.\n\n" + md
    )
    atomic_write(stem_file(args.out, ".md"), text)
    atomic_write(stem_file(args.out, ".json"), json.dumps({"budget": BUDGET, "rows": data, "paper": PAPER}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
