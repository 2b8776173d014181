"""pipeline and compare on a small local collection: run files, resume, qrels gaps, the comparison table."""

import json

import pytest

from rsd_rerank.integrations.compare import compare, summarise
from rsd_rerank.integrations.measures import evaluate, parse_measures
from rsd_rerank.integrations.pipeline import pipeline
from rsd_rerank.integrations.report import figure, write_comparison
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests

WORDS = "ocean tide moon wave vitamin bone sun light salt water storm coast reef fish".split()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from rsd_rerank.integrations.pyserini import index_corpus

    root = tmp_path_factory.mktemp("collection")
    docs = [(f"d{i}", f"title {i}", " ".join(WORDS[(i * j) % len(WORDS)] for j in range(1, 12))) for i in range(40)]
    index_corpus(iter(docs), root / "index")
    (root / "qrels").write_text("q1 0 d3 1\nq1 0 d7 2\nq2 0 d5 1\n")
    import ir_measures

    return root / "index", list(ir_measures.read_trec_qrels(str(root / "qrels")))


TOPICS = {"q1": "ocean tide moon", "q2": "vitamin bone sun", "q3": "salt water coast", "q4": "zzzz qqqq"}


def test_pipeline_writes_every_hit_resumes_and_evaluates(tiny_llama, collection, tmp_path, caplog):
    index, qrels = collection
    out = tmp_path / "run.trec"
    prompt = PromptConfig()
    first = pipeline(
        tiny_llama,
        index,
        dict(list(TOPICS.items())[:2]),
        qrels,
        out,
        DecodingConfig("gsd", 2),
        prompt,
        hits=15,
        rerank_top=8,
    )
    assert first.reranked == 2 and first.resumed == 0
    with pytest.raises(ValueError, match="--resume"):
        pipeline(tiny_llama, index, TOPICS, qrels, out, DecodingConfig("gsd", 2), prompt, hits=15, rerank_top=8)
    second = pipeline(
        tiny_llama, index, TOPICS, qrels, out, DecodingConfig("gsd", 2), prompt, hits=15, rerank_top=8, resume=True
    )
    assert second.resumed == 2 and second.reranked == 1  # q4 has no hits: left out, with a warning
    assert "no BM25 hits" in caplog.text
    lines = [ln.split() for ln in out.read_text().splitlines()]
    by_query = {}
    for qid, _, docid, r, score, _ in lines:
        by_query.setdefault(qid, []).append((int(r), float(score), docid))
    assert set(by_query) == {"q1", "q2", "q3"}
    for hits in by_query.values():
        docids = [d for _, _, d in hits]
        assert len(docids) == len(set(docids)) == 15
        scores = [s for _, s, _ in hits]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == 15
    # q3 has no judgments: reported, not averaged in
    assert second.unjudged == ["q3"]
    assert set(second.metrics) == {"BM25", "rsd-rerank.gsd2"}
    assert set(second.metrics["BM25"]) == {"nDCG@10", "RR@10", "R@20"}


def test_pipeline_with_windows_over_twenty(tiny_llama, collection, tmp_path):
    index, qrels = collection
    out = tmp_path / "run.trec"
    pipeline(
        tiny_llama,
        index,
        {"q1": TOPICS["q1"]},
        None,
        out,
        DecodingConfig("greedy"),
        PromptConfig(),
        hits=30,
        rerank_top=25,
    )
    assert len(out.read_text().splitlines()) == 30


def test_evaluate_without_qrels_and_with_unjudged_queries(collection):
    _, qrels = collection
    assert evaluate(None, {"q1": {"d3": 1.0}}) is None
    metrics, unjudged = evaluate(qrels, {"q1": {"d3": 2.0, "d1": 1.0}, "qx": {"d1": 1.0}})
    assert unjudged == ["qx"] and metrics["RR@10"] == 1.0
    assert list(metrics) == ["nDCG@10", "RR@10", "R@20"]  # the columns' order is the measures' order


def test_compare_table(tiny_llama, requests_json, tmp_path):
    path = tmp_path / "r.jsonl"
    short = [{**r, "candidates": r["candidates"][:8]} for r in requests_json]
    path.write_text("".join(json.dumps(r) + "\n" for r in short))
    requests = read_requests(path)
    records = compare(tiny_llama, requests, None, ["generate", "std", "gsd", "greedy"], [1, 8], PromptConfig())
    rows = summarise(records, None)
    labels = [(r["method"], r["T"]) for r in rows]
    assert labels == [("bm25", None), ("generate", None), ("std", 0), ("gsd", 1), ("gsd", 8), ("greedy", None)]
    by = {label: r for label, r in zip(labels, rows, strict=True)}
    assert by[("greedy", None)]["KT"] == 1.0 and by[("gsd", 8)]["KT"] == 1.0  # T >= K reaches the target
    assert by[("generate", None)]["parse_failures"] == 2  # a random model writes no ranking; RankLLM repairs it
    table = write_comparison(
        tmp_path / "cmp", {"target": tiny_llama.name, "dtype": "float32", "queries": 2}, rows, records
    )
    assert "| gsd@8 |" in table
    assert all((tmp_path / f"cmp.{ext}").stat().st_size > 0 for ext in ("json", "md", "png"))
    with pytest.raises(ValueError, match="unknown method"):
        compare(tiny_llama, requests, None, ["beam"], [1], PromptConfig())

    # Two budgets: a budget axis with a line per budgeted method. One budget: bars, one per method.
    ax_kt, _ = figure(rows).axes
    assert [line.get_label() for line in ax_kt.lines][:1] == ["gsd"] and not ax_kt.patches
    one = summarise(compare(tiny_llama, requests, None, ["std", "gsd", "greedy"], [5], PromptConfig()), None)
    ax_kt, _ = figure(one).axes
    assert [t.get_text() for t in ax_kt.get_xticklabels()] == ["std", "gsd@5", "greedy"] and len(ax_kt.patches) == 3


def test_pipeline_resume_checks_what_it_resumes(tiny_llama, collection, tmp_path, caplog):
    from rsd_rerank.runs import read_run, write_run

    index, qrels = collection
    out = tmp_path / "run.trec"
    topics = dict(list(TOPICS.items())[:2])
    args = (tiny_llama, index, topics, qrels, out)
    pipeline(*args, DecodingConfig("gsd", 2), PromptConfig(), hits=15, rerank_top=8)
    whole = out.read_text()
    # another method or budget: an error before any work, the run untouched
    with pytest.raises(ValueError, match="is a run of rsd-rerank.gsd2, not rsd-rerank.gsd3"):
        pipeline(*args, DecodingConfig("gsd", 3), PromptConfig(), hits=15, rerank_top=8, resume=True)
    assert out.read_text() == whole
    # a query cut short (by hand, or another tool) is reranked again; another query outside the topics stays
    run = read_run(out)
    write_run(out, {"q1": run.hits["q1"][:4], "q2": run.hits["q2"], "q9": [("d1", 1.0)]}, "rsd-rerank.gsd2")
    measures = parse_measures("AP P@5")  # --measures, in ir_measures syntax
    result = pipeline(
        *args, DecodingConfig("gsd", 2), PromptConfig(), hits=15, rerank_top=8, resume=True, measures=measures
    )
    assert result.reranked == 1 and "incomplete" in caplog.text
    assert list(result.metrics["BM25"]) == list(result.metrics["rsd-rerank.gsd2"]) == ["AP", "P@5"]
    again = read_run(out)
    assert again.hits["q1"] == read_run_text(whole)["q1"] and "q9" in again.hits
    # a malformed line: an error naming it, before any work
    out.write_text(whole + "q3 Q0 d1 1\n")
    with pytest.raises(ValueError, match=r"run.trec:31: not a TREC run line"):
        pipeline(*args, DecodingConfig("gsd", 2), PromptConfig(), hits=15, rerank_top=8, resume=True)


def read_run_text(text):
    hits = {}
    for line in text.splitlines():
        qid, _, docid, _, score, _ = line.split()
        hits.setdefault(qid, []).append((docid, float(score)))
    return hits
