"""MovieLens-100k as listwise recommendation requests: user history → rank 20 candidate movies.

The data ship inside the PyPI wheel ``recbole==1.2.1`` (MIT; MovieLens terms: research use, cite Harper &
Konstan 2015). The wheel is downloaded once without its dependencies and only the ``ml-100k`` folder is
read; recbole itself is never installed. For each user (seeded sample), the query is their 10 most recent
movies rated ≥ 4; the candidates are their next movie rated ≥ 4 (held out, relevance 1) and 19 movies they
never rated, shuffled. Writes RankLLM request JSONL and TREC qrels.

    .venv/bin/python examples/movielens/make_requests.py --users 20
    .venv/bin/rsd-rerank rerank --template examples/movielens/rec_template.yaml --method rsd --budget 5 \\
        --requests runs/movielens/requests.jsonl --output runs/movielens/rsd5.trec
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

from rsd_rerank.files import atomic_write
from rsd_rerank.targets import cache_dir

WHEEL = "recbole==1.2.1"
FOLDER = "recbole/dataset_example/ml-100k/"


def ml100k() -> Path:
    """The ml-100k folder, unpacked once from the recbole wheel into the cache."""
    out = cache_dir() / "ml-100k"
    if (out / "ml-100k.inter").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("recbole-*.whl")
        staging = out.with_name(".ml-100k.tmp")
        staging.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(FOLDER) and not name.endswith("/"):
                    (staging / Path(name).name).write_bytes(zf.read(name))
        staging.rename(out)
    return out


def _table(path: Path) -> list[dict[str, str]]:
    """RecBole atomic files: tab-separated with typed headers (``user_id:token``)."""
    text = path.read_text(encoding="latin-1")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    header = [h.split(":")[0] for h in rows[0]]
    return [dict(zip(header, r, strict=False)) for r in rows[1:] if r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/movielens"))
    args = p.parse_args(argv)
    folder = ml100k()
    items = {r["item_id"]: r for r in _table(folder / "ml-100k.item")}
    history = defaultdict(list)
    for r in _table(folder / "ml-100k.inter"):
        history[r["user_id"]].append((int(r["timestamp"]), r["item_id"], float(r["rating"])))

    def title(item: str) -> str:
        row = items[item]
        return f"{row.get('movie_title', item)} ({row.get('release_year', '?')}; {row.get('class', '')})"

    rng = random.Random(args.seed)
    users = sorted(u for u, h in history.items() if sum(r >= 4 for _, _, r in h) >= 11)
    requests, qrels = [], []
    for user in rng.sample(users, args.users):
        liked = [i for _, i, r in sorted(history[user]) if r >= 4]
        seen = {i for _, i, _ in history[user]}
        held_out = liked[10]
        negatives = rng.sample(sorted(set(items) - seen), 19)
        candidates = [held_out, *negatives]
        rng.shuffle(candidates)
        query = "; ".join(title(i) for i in liked[:10])
        requests.append(
            {
                "query": {"qid": f"u{user}", "text": query},
                "candidates": [{"docid": i, "score": 0.0, "doc": {"text": title(i)}} for i in candidates],
            }
        )
        qrels.append(f"u{user} 0 {held_out} 1")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "requests.jsonl", "".join(json.dumps(r) + "\n" for r in requests))
    atomic_write(args.out / "qrels.txt", "".join(q + "\n" for q in qrels))
    print(f"wrote {len(requests)} requests and qrels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
