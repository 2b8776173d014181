"""PyTerrier: BM25 (Pyserini, offline) as a PyTerrier source, then ``% 20 >> RSD(...)``, then nDCG@10.

.venv/bin/python examples/pyterrier_rsd.py [--queries 5] [--model random-llama]
"""

from __future__ import annotations

import argparse

import ir_measures
import pandas as pd
import pyterrier as pt

from rsd_rerank.integrations import datasets
from rsd_rerank.integrations.pyserini import bm25, stored_contents
from rsd_rerank.integrations.pyterrier import RSD
from rsd_rerank.methods import DecodingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="indexes/beir-scifact")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--model", default="random-llama")
    args = parser.parse_args()

    topics = dict(list(datasets.queries("beir/scifact/test").items())[: args.queries])
    runs = bm25(args.index, topics, 100)
    texts = stored_contents(args.index, {d for hits in runs.values() for d, _ in hits})
    frame = pd.DataFrame(
        [
            {"qid": q, "query": topics[q], "docno": d, "text": texts[d], "score": s, "rank": r}
            for q, hits in runs.items()
            for r, (d, s) in enumerate(hits)
        ]
    )
    retriever = pt.Transformer.from_df(frame)  # any PyTerrier retriever fits here
    pipeline = retriever % 20 >> RSD(args.model, DecodingConfig("gsd", 3))
    results = pipeline.transform(pd.DataFrame({"qid": list(topics), "query": list(topics.values())}))
    print(results[["qid", "docno", "score", "rank"]].head(10).to_string(index=False))
    qrels = datasets.qrels("beir/scifact/test")
    for name, run in (("BM25 top 20", retriever % 20), ("BM25 % 20 >> RSD", None)):
        frame_ = run.transform(pd.DataFrame({"qid": list(topics), "query": list(topics.values())})) if run else results
        scores = {q: dict(zip(g["docno"], g["score"], strict=True)) for q, g in frame_.groupby("qid")}
        value = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], [q for q in qrels if q.query_id in scores], scores)
        print(f"{name}: nDCG@10 {value[ir_measures.nDCG @ 10]:.4f}")


if __name__ == "__main__":
    main()
