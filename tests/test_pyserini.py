"""Pyserini offline: index SciFact, retrieve, reproduce Anserini's BEIR flat regression; bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsd_rerank.cli import main

SCIFACT = Path(os.environ.get("IR_DATASETS_HOME", Path.home() / ".ir_datasets")) / "beir" / "scifact" / "source.zip"
CLI = [sys.executable, "-m", "rsd_rerank.cli"]
# Every HTTP(S) request through a proxy that refuses connections: no network, whatever this machine has.
NO_NETWORK = {
    **os.environ,
    **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    "no_proxy": "",
    "NO_PROXY": "",
}


@pytest.mark.skipif(not SCIFACT.exists(), reason="SciFact not in the ir_datasets cache (scripts/setup.sh seeds it)")
def test_scifact_bm25_reproduces_anserini_in_a_fresh_process(tmp_path):
    # A fresh interpreter: Java, the JVM options and the catalog fallback must all come from our code.
    # This machine has no network, so the catalog fetch fails here for real.
    index, run = tmp_path / "idx", tmp_path / "bm25.trec"
    subprocess.run([*CLI, "index", "--dataset", "beir/scifact", "--index", str(index)], check=True, env=NO_NETWORK)
    out = subprocess.run(
        [*CLI, "retrieve", "--index", str(index), "--dataset", "beir/scifact/test", "--output", str(run)],
        check=True,
        capture_output=True,
        text=True,
        env=NO_NETWORK,
    ).stdout
    assert "nDCG@10\t0.6789" in out and "R@100\t0.9253" in out and "R@1000\t0.9767" in out
    assert len({line.split()[0] for line in run.read_text().splitlines()}) == 300


def test_catalog_fallback_only_when_the_fetch_fails(monkeypatch):
    import io
    import urllib.error
    import urllib.request

    from rsd_rerank.integrations import pyserini as adapter

    catalog = adapter._CATALOG_URL + "master/x.json"
    calls = []

    def fake(url, *args, **kwargs):
        calls.append(url)
        if "offline" in url:
            raise urllib.error.URLError("no route")
        return io.BytesIO(b"real catalog")

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with adapter._catalog_fallback():
        assert urllib.request.urlopen(catalog).read() == b"real catalog"  # with a network: untouched
        placeholders = json.loads(urllib.request.urlopen(catalog + "?offline").read())
        assert placeholders and all(r["urls"] == [] for r in placeholders)
        with pytest.raises(urllib.error.URLError):  # other URLs keep failing as they should
            urllib.request.urlopen("https://example.org/offline")
    assert len(calls) == 3
    assert urllib.request.urlopen is fake  # the process's urlopen is back once Pyserini is imported
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(catalog + "?offline")


def test_local_corpus_and_topics_without_qrels(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "t", "text": w}) + "\n"
            for i, w in enumerate(["moon tides ocean", "vitamin bones", "ocean waves"])
        )
    )
    topics = tmp_path / "topics.tsv"
    topics.write_text("q1\tocean tides\nq2\tzzzz\n")
    assert main(["index", "--corpus", str(corpus), "--index", str(tmp_path / "idx")]) == 0
    assert (
        main(
            [
                "retrieve",
                "--index",
                str(tmp_path / "idx"),
                "--topics",
                str(topics),
                "--hits",
                "5",
                "--output",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "no qrels for these topics: no metrics" in capsys.readouterr().out
    lines = [line.split() for line in (tmp_path / "run").read_text().splitlines()]
    assert [line[2] for line in lines if line[0] == "q1"][:1] == ["d0"]
    assert not [line for line in lines if line[0] == "q2"]  # a query with no hits gets no lines

    # Qrels that judge only q1 and a query never run: q2 is named and left out, q9 does not count as zero.
    qrels = tmp_path / "qrels"
    qrels.write_text("q1 0 d0 1\nq9 0 d1 1\n")
    argv = ["retrieve", "--index", str(tmp_path / "idx"), "--topics", str(topics), "--qrels", str(qrels)]
    assert main([*argv, "--hits", "5", "--output", str(tmp_path / "run2")]) == 0
    out = capsys.readouterr().out
    assert "nDCG@10\t1.0000" in out
    assert "1 queries have no judgments and are left out of the metrics: q2" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["retrieve", "--index", "{tmp}/missing", "--topics", "{tmp}/t.tsv", "--output", "{tmp}/o"],
            "is not a Lucene index",
        ),
        (["retrieve", "--index", "{tmp}", "--topics", "{tmp}/t.tsv", "--output", "{tmp}/o"], "is not a Lucene index"),
        (
            ["index", "--dataset", "beir/no-such-set", "--index", "{tmp}/i"],
            "'beir/no-such-set' is neither an existing file nor an ir_datasets id",
        ),
        (["index", "--corpus", "{tmp}/bad.jsonl", "--index", "{tmp}/i"], "bad.jsonl:2: corpus line has no id"),
        (["index", "--corpus", "{tmp}/bad.jsonl", "--index", "{tmp}"], "already exists"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, message):
    (tmp_path / "t.tsv").write_text("q1\ttext\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"_id": "a", "text": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "i").exists()  # nothing half-built left behind
