"""`rsd-rerank rerank`: request JSONL in, TREC run out, clear errors, nothing lost on failure."""

import json

import pytest

from rsd_rerank.cli import main


def _write_requests(path, requests):
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def _run_lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_rerank_writes_a_trec_run(tmp_path, requests_json, capsys):
    out = tmp_path / "run.trec"
    assert (
        main(
            [
                "rerank",
                "--requests",
                str(_write_requests(tmp_path / "r.jsonl", requests_json)),
                "--method",
                "gsd",
                "--budget",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    lines = _run_lines(out)
    assert len(lines) == 40
    for request in requests_json:
        qid = request["query"]["qid"]
        mine = [line for line in lines if line[0] == qid]
        assert sorted(line[2] for line in mine) == sorted(c["docid"] for c in request["candidates"])
        assert [int(line[3]) for line in mine] == list(range(1, 21))
        scores = [float(line[4]) for line in mine]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == 20
    assert {line[5] for line in lines} == {"rsd-rerank.gsd2"}
    assert "passes=2" in capsys.readouterr().out


def test_greedy_through_the_cli_is_the_sessions_target(tmp_path, requests_json, smollm2):
    from rsd_rerank.session import TargetSession

    request = requests_json[1]
    out = tmp_path / "run.trec"
    assert (
        main(
            [
                "rerank",
                "--requests",
                str(_write_requests(tmp_path / "r.jsonl", [request])),
                "--method",
                "greedy",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    session = TargetSession(smollm2, request["query"]["text"], [c["doc"] for c in request["candidates"]])
    assert [line[2] for line in _run_lines(out)] == [
        request["candidates"][i]["docid"] for i in session.greedy_ranking()
    ]


def test_single_candidate_is_returned_without_an_llm_call(tmp_path, capsys):
    request = {"query": {"text": "q", "qid": 7}, "candidates": [{"docid": "d1", "score": 1.0, "doc": {"text": "x"}}]}
    out = tmp_path / "run.trec"
    assert (
        main(["rerank", "--requests", str(_write_requests(tmp_path / "r.jsonl", [request])), "--output", str(out)]) == 0
    )
    assert _run_lines(out) == [["7", "Q0", "d1", "1", "1", "rsd-rerank.rsd5"]]
    assert "passes=0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(candidates=[]), "no candidates"),
        (lambda r: r["candidates"].append(dict(r["candidates"][0])), "duplicate docid 'tides-00'"),
        (
            lambda r: r["candidates"].extend({**c, "docid": c["docid"] + "x"} for c in list(r["candidates"])[:7]),
            "27 candidates",
        ),
        (lambda r: r.pop("query"), "r.jsonl:2: not a RankLLM request"),
    ],
)
def test_bad_requests_fail_clearly_and_keep_the_old_run(tmp_path, requests_json, capsys, mutate, message):
    bad = json.loads(json.dumps(requests_json[0]))
    mutate(bad)
    out = tmp_path / "run.trec"
    out.write_text("previous run\n")
    code = main(
        [
            "rerank",
            "--requests",
            str(_write_requests(tmp_path / "r.jsonl", [requests_json[1], bad])),
            "--method",
            "std",
            "--output",
            str(out),
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == "previous run\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_missing_requests_file(tmp_path, capsys):
    assert main(["rerank", "--requests", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read requests file" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(tmp_path, requests_json, capsys):
    code = main(
        [
            "rerank",
            "--model",
            "no/such-model",
            "--requests",
            str(_write_requests(tmp_path / "r.jsonl", requests_json)),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "never downloads from a model hub" in capsys.readouterr().err
