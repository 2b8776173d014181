"""The user's own data through ``rsd-rerank rerank``: any number of candidates, RankLLM's request formats,
any retriever's TREC run (resumable, missing topics and texts handled), and RankLLM's own CLI."""

import json
from pathlib import Path

import pytest

from rsd_rerank.cli import main
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.runs import read_requests

MODEL = ["--model", "random-llama", "--method", "gsd", "--budget", "2"]
INDEX = Path(__file__).resolve().parent.parent / "indexes" / "beir-scifact"


def _lines(path):
    return [line.split() for line in Path(path).read_text().splitlines()]


def _by_query(path):
    out = {}
    for qid, _, docid, rank, score, _ in _lines(path):
        out.setdefault(qid, []).append((docid, int(rank), float(score)))
    return out


@pytest.fixture(scope="module")
def corpus(requests_json):
    """60 passages: the example passages, each again with a number so that all differ."""
    docs = [c["doc"]["text"] for r in requests_json for c in r["candidates"]]
    return {f"p{i:03d}": f"{docs[i % len(docs)]} (passage {i})" for i in range(60)}


def _request(qid, text, docids, corpus):
    return {
        "query": {"qid": qid, "text": text},
        "candidates": [
            {"docid": d, "score": float(len(docids) - i), "doc": {"contents": corpus[d]}} for i, d in enumerate(docids)
        ],
    }


def test_a_100_candidate_request_keeps_every_docid_once(tmp_path, corpus, requests_json):
    docids = [f"p{i % 60:03d}" if i < 60 else f"x{i}" for i in range(100)]
    texts = {**corpus, **{f"x{i}": f"extra passage {i} about tides and vitamins" for i in range(60, 100)}}
    request = _request("long", requests_json[0]["query"]["text"], docids, texts)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(request) + "\n" + json.dumps(requests_json[1]) + "\n")
    out = tmp_path / "run.trec"
    assert main(["rerank", *MODEL, "--requests", str(path), "--output", str(out)]) == 0
    run = _by_query(out)
    long = run["long"]
    assert sorted(d for d, _, _ in long) == sorted(docids) and [r for _, r, _ in long] == list(range(1, 101))
    assert all(a[2] > b[2] for a, b in zip(long, long[1:], strict=False))
    assert len(run[requests_json[1]["query"]["qid"]]) == 20

    # --rerank-top 30: the 70 below keep their input order under the reranked 30.
    top = tmp_path / "top.trec"
    assert main(["rerank", *MODEL, "--requests", str(path), "--rerank-top", "30", "--output", str(top)]) == 0
    ranked = [d for d, _, _ in _by_query(top)["long"]]
    assert sorted(ranked[:30]) == sorted(docids[:30]) and ranked[30:] == docids[30:]


def test_json_arrays_and_rankllm_doc_keys(tmp_path, requests_json):
    lines = tmp_path / "r.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    array = tmp_path / "r.json"
    array.write_text(json.dumps(requests_json))
    assert read_requests(array) == read_requests(lines)
    out_a, out_b = tmp_path / "a.trec", tmp_path / "b.trec"
    assert main(["rerank", *MODEL, "--requests", str(array), "--output", str(out_a)]) == 0
    assert main(["rerank", *MODEL, "--requests", str(lines), "--output", str(out_b)]) == 0
    assert out_a.read_text() == out_b.read_text()

    # RankLLM's converter reads segment/title (and the other keys) itself.
    segment = json.loads(json.dumps(requests_json[0]))
    for c in segment["candidates"]:
        c["doc"] = {"title": "T", "segment": c["doc"]["text"]}
    (request,) = read_requests(_write(tmp_path / "s.json", [segment]))
    from rsd_rerank.prompt import request_prompt
    from rsd_rerank.targets import random_llama

    prompt = request_prompt(random_llama(hidden_size=32, intermediate_size=64, num_hidden_layers=1).tokenizer, request)
    assert "[A] Title: T Content: " in prompt.messages[1]["content"]


def _write(path, value):
    path.write_text(json.dumps(value))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[{"query": {"text": "q", "qid": "1"}, "candidates": []}, {"query": 3}]',
            "r.json: element 1: not a RankLLM request",
        ),
        ('{"query": {"text": "q", "qid": "1"}}', "a .json request file holds an array"),
        ("[{", "not a JSON array of RankLLM requests"),
    ],
)
def test_bad_json_request_files_name_the_element(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_requests(path)


@pytest.fixture()
def run_files(tmp_path, corpus, requests_json):
    """A run of 3 queries x 25 hits from "another retriever", its topics and a JSONL corpus."""
    texts = [requests_json[0]["query"]["text"], requests_json[1]["query"]["text"], "what is a passage"]
    topics = {f"q{i}": t for i, t in enumerate(texts)}
    hits = {q: [f"p{(7 * i + 2 * n) % 60:03d}" for n in range(25)] for i, q in enumerate(topics)}  # no repeats
    lines = [f"{q} Q0 {d} {r + 1} {30 - r}.5 other" for q, ds in hits.items() for r, d in enumerate(ds)]
    lines[30:35] = reversed(lines[30:35])  # file order need not be rank order: hits are sorted by score
    (tmp_path / "run.trec").write_text("\n".join(lines) + "\n")
    (tmp_path / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in corpus.items()))
    return tmp_path, topics, hits


def _rerank_run(folder, out, *extra):
    return main(
        [
            "rerank",
            *MODEL,
            "--run",
            str(folder / "run.trec"),
            "--topics",
            str(folder / "topics.tsv"),
            "--corpus",
            str(folder / "corpus.jsonl"),
            "--rerank-top",
            "10",
            "--output",
            str(out),
            *extra,
        ]
    )


def test_a_trec_run_in_gives_a_run_out_with_every_hit(run_files, corpus):
    folder, topics, hits = run_files
    out = folder / "out.trec"
    assert _rerank_run(folder, out) == 0
    run = _by_query(out)
    assert list(run) == list(topics)
    requests = []
    for q, ds in hits.items():
        ranked = [d for d, _, _ in run[q]]
        assert sorted(ranked) == sorted(ds) and ranked[10:] == ds[10:]  # every hit; the rest in input order
        requests.append(_request(q, topics[q], ds[:10], {d: corpus[d] for d in ds}))
    # The top 10 are exactly what reranking the same passages as a request file gives.
    same = folder / "same.trec"
    assert main(["rerank", *MODEL, "--requests", str(_write(folder / "r.json", requests)), "--output", str(same)]) == 0
    assert {q: [d for d, _, _ in h] for q, h in _by_query(same).items()} == {
        q: [d for d, _, _ in h[:10]] for q, h in run.items()
    }


def test_an_interrupted_run_resumes_to_the_same_bytes(run_files, monkeypatch):
    from rsd_rerank.integrations import pipeline

    folder, _, _ = run_files
    whole = folder / "whole.trec"
    assert _rerank_run(folder, whole) == 0
    real = pipeline.rerank_windowed

    def cut_after_first_batch(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    out = folder / "out.trec"
    monkeypatch.setattr(pipeline, "rerank_windowed", cut_after_first_batch)
    assert _rerank_run(folder, out) == 130
    assert list(_by_query(out)) == ["q0"]  # written after the first query, whole
    monkeypatch.setattr(pipeline, "rerank_windowed", real)
    assert _rerank_run(folder, out) == 2  # never overwritten without --resume
    assert _rerank_run(folder, out, "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()


def test_missing_topics_and_texts_are_named_or_kept_in_place(run_files, capsys, caplog):
    folder, topics, hits = run_files
    (folder / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in topics.items() if q != "q2"))
    out = folder / "out.trec"
    assert _rerank_run(folder, out) == 2
    assert "qid 'q2'" in capsys.readouterr().err and not out.exists()
    assert _rerank_run(folder, out, "--keep-missing") == 0
    assert "1 queries have no topic" in caplog.text
    assert [d for d, _, _ in _by_query(out)["q2"]] == hits["q2"]

    gone = hits["q0"][4]
    kept = [line for line in (folder / "corpus.jsonl").read_text().splitlines() if json.loads(line)["_id"] != gone]
    (folder / "corpus.jsonl").write_text("\n".join(kept) + "\n")
    (folder / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
    out2 = folder / "out2.trec"
    assert _rerank_run(folder, out2) == 2
    assert f"docid {gone!r}" in capsys.readouterr().err
    assert _rerank_run(folder, out2, "--keep-missing") == 0
    ranked = [d for d, _, _ in _by_query(out2)["q0"]]
    assert ranked[4] == gone and sorted(ranked) == sorted(hits["q0"])


@pytest.mark.skipif(not INDEX.is_dir(), reason="needs indexes/beir-scifact (bash scripts/setup.sh)")
def test_index_and_dataset_give_the_same_passages(tmp_path):
    run = tmp_path / "bm25.trec"
    assert (
        main(
            [
                "retrieve",
                "--index",
                str(INDEX),
                "--dataset",
                "beir/scifact/test",
                "--queries",
                "2",
                "--hits",
                "12",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    outputs = []
    for source in (["--index", str(INDEX)], []):  # stored Lucene contents, then ir_datasets' docs
        out = tmp_path / f"out{len(outputs)}.trec"
        argv = ["rerank", *MODEL, "--run", str(run), "--dataset", "beir/scifact/test", *source, "--output", str(out)]
        assert main(argv) == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 24


def test_rankllm_cli_route_writes_the_run_rsd_rerank_writes(tmp_path, requests_json):
    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    ours, theirs = tmp_path / "ours.trec", tmp_path / "theirs.trec"
    assert main(["rerank", *MODEL, "--requests", str(requests), "--output", str(ours)]) == 0
    argv = ["rank-llm", "--method", "gsd", "--budget", "2"]
    rank_llm_args = ["rerank", "--model-path", "rsd:random-llama", "--requests-file", str(requests)]
    assert main([*argv, *rank_llm_args, "--top-k-candidates", "20", "--output-trec-file", str(theirs)]) == 0
    assert [line[:4] for line in _lines(theirs)] == [line[:4] for line in _lines(ours)]
    assert {line[5] for line in _lines(ours)} == {DecodingConfig("gsd", 2).run_tag}
