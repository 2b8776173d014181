"""Fidelity in two precisions side by side: two ``fidelity.py`` runs of one target (say float32 and
bfloat16), compared on the claims both hold, each against its own greedy ranking ("exact in its own
terms"), with the paired per-claim KT difference (second minus first).

    .venv/bin/python benchmarks/fidelity.py --target smollm2 --dtype bfloat16 --queries 50 \\
        --max-passage-words 40 --agent rsd-equivariant=smollm2 --out benchmarks/results/fidelity-smollm2-bf16
    .venv/bin/python benchmarks/fidelity_dtypes.py benchmarks/results/fidelity-smollm2 \\
        benchmarks/results/fidelity-smollm2-bf16 --out benchmarks/results/fidelity-smollm2-dtypes

Reads each stem's ``.claims.jsonl`` and ``.json``; writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rsd_rerank.files import atomic_write, stem_file
from rsd_rerank.metrics import bootstrap_mean, kendall_tau


def _claims(stem: Path) -> dict[str, dict]:
    records = {}
    for line in stem_file(stem, ".claims.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["qid"]] = record  # a later line (a resumed or extended run) wins
    return records


def compare(first: Path, second: Path) -> dict:
    """Per (method, T) present in both runs: KT to each run's own target on the shared claims, and the
    paired difference."""
    a, b = _claims(first), _claims(second)
    qids = [q for q in a if q in b]
    if not qids:
        raise ValueError(f"{first} and {second} share no claim")
    meta = [json.loads(stem_file(stem, ".json").read_text()) for stem in (first, second)]
    rng = np.random.default_rng(0)
    rows = []
    methods = [m for m in a[qids[0]]["methods"] if m in b[qids[0]]["methods"]]
    for method in methods:
        for t in a[qids[0]]["methods"][method]:
            if t not in b[qids[0]]["methods"][method]:
                continue
            kts = []
            for run in (a, b):
                rankings = np.array([run[q]["methods"][method][t]["ranking"] for q in qids])
                targets = np.array([run[q]["target"] for q in qids])
                kts.append(kendall_tau(rankings, targets).astype(float))
            rows.append(
                {
                    # T = 0 of a loop method (it has other budgets) is the STD order
                    "method": "std" if t == "0" and len(a[qids[0]]["methods"][method]) > 1 else method,
                    "T": int(t),
                    "first": bootstrap_mean(kts[0], rng),
                    "second": bootstrap_mean(kts[1], rng),
                    "difference": bootstrap_mean(kts[1] - kts[0], rng),
                }
            )
    seen, unique = set(), []
    for row in rows:  # STD appears under every loop method at T = 0: once is enough
        if (row["method"], row["T"]) not in seen:
            seen.add((row["method"], row["T"]))
            unique.append(row)
    same = float(np.mean([a[q]["target"] == b[q]["target"] for q in qids]))
    targets_kt = kendall_tau(np.array([a[q]["target"] for q in qids]), np.array([b[q]["target"] for q in qids]))
    return {
        "first": {"stem": str(first), "dtype": meta[0].get("dtype", "float32"), "target": meta[0]["target"]},
        "second": {"stem": str(second), "dtype": meta[1].get("dtype", "float32"), "target": meta[1]["target"]},
        "claims": len(qids),
        "same_greedy_ranking": same,
        "kt_between_greedy_rankings": float(targets_kt.mean()),
        "rows": unique,
    }


def markdown(summary: dict) -> str:
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    one, two = summary["first"]["dtype"], summary["second"]["dtype"]
    lines = [
        f"# Fidelity of `{summary['first']['target']}` in {one} and in {two}",
        "",
        f"{summary['claims']} SciFact test claims held by both runs (`{summary['first']['stem']}`, "
        f"`{summary['second']['stem']}`); each method's KT to its own precision's greedy ranking. The two greedy "
        f"rankings are identical on {summary['same_greedy_ranking']:.0%} of the claims (mean KT between them "
        f"{summary['kt_between_greedy_rankings']:.3f}).",
        "",
        f"| method | T | KT ({one}) | KT ({two}) | {two} − {one}, paired |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(f"| {r['method']} | {r['T']} | {fmt(r['first'])} | {fmt(r['second'])} | {fmt(r['difference'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", type=Path, help="a fidelity.py output stem (e.g. the float32 run)")
    p.add_argument("second", type=Path, help="another run's stem, same target (e.g. the bfloat16 run)")
    p.add_argument("--out", type=Path, required=True, help="output stem: writes .json and .md")
    args = p.parse_args(argv)
    summary = compare(args.first, args.second)
    table = markdown(summary)
    print(table)
    atomic_write(stem_file(args.out, ".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write(stem_file(args.out, ".md"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
