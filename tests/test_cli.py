"""`rsd-rerank rerank`: request JSONL in, TREC run out, clear errors, nothing lost on failure."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert _run_lines(out) == [["7", "Q0", "d1", "1", "1", "rsd-rerank.rsd-drafts5"]]
    assert "passes=0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["candidates"].append(dict(r["candidates"][0])), "duplicate docid 'tides-00'"),
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
    assert "asks no model hub unless HF_HUB_OFFLINE=0" in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError("no JVM here"), OSError(28, "No space left on device")])
def test_environment_errors_are_one_line_and_exit_2(tmp_path, requests_json, capsys, monkeypatch, error):
    import rsd_rerank.targets

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(rsd_rerank.targets, "load_target", broken)
    requests = _write_requests(tmp_path / "r.jsonl", requests_json)
    assert main(["rerank", "--requests", str(requests), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(error) in err and "Traceback" not in err


def test_options_a_method_ignores_are_warned_about(tmp_path, requests_json, caplog):
    requests = _write_requests(tmp_path / "r.jsonl", requests_json[:1])
    args = ["rerank", "--requests", str(requests), "--output", str(tmp_path / "o"), "--method", "std"]
    assert main([*args, "--budget", "3", "--agent", "smollm2"]) == 0
    assert "--budget is ignored by --method std" in caplog.text
    assert "--agent is ignored by --method std" in caplog.text
    caplog.clear()
    assert main([*args[:-2], "--method", "gsd", "--budget", "1", "--output", str(tmp_path / "p")]) == 0
    assert "ignored" not in caplog.text


def test_options_come_from_the_config_dataclasses():
    from rsd_rerank.agent import AgentConfig
    from rsd_rerank.cli import AGENT_FIELDS, TRAIN_FIELDS, build_parser, config_from
    from rsd_rerank.training import TrainConfig

    args = build_parser().parse_args(["train", "--requests", "r", "--out", "o"])
    assert config_from(TrainConfig, args, TRAIN_FIELDS) == TrainConfig()
    assert config_from(AgentConfig, args, AGENT_FIELDS) == AgentConfig()
    args = build_parser().parse_args(["train", "--requests", "r", "--out", "o", "--rpo-queries", "7", "--beta", "0.5"])
    assert config_from(TrainConfig, args, TRAIN_FIELDS) == TrainConfig(rpo_queries=7, beta=0.5)


def test_repeated_qids_in_a_request_file_are_an_error(tmp_path, requests_json, capsys):
    requests = _write_requests(tmp_path / "r.jsonl", [requests_json[0], requests_json[0]])
    assert main(["rerank", "--requests", str(requests), "--output", str(tmp_path / "o")]) == 2
    assert "repeats qids" in capsys.readouterr().err


def test_trec_runs_are_written_by_one_function_and_read_by_another(tmp_path):
    from rsd_rerank.runs import rank_scores, read_run, write_run

    path = tmp_path / "run.trec"
    assert write_run(path, {"q1": rank_scores(["d2", "d1"]), "q2": [("d9", 12.5), ("d3", 3.25)]}, "tag") == 4
    assert path.read_text() == "q1 Q0 d2 1 2 tag\nq1 Q0 d1 2 1 tag\nq2 Q0 d9 1 12.500000 tag\nq2 Q0 d3 2 3.250000 tag\n"
    run = read_run(path)
    assert run.hits == {"q1": [("d2", 2.0), ("d1", 1.0)], "q2": [("d9", 12.5), ("d3", 3.25)]}
    assert run.tags == {"tag"}
    path.write_text("q1\tQ0  d2 1 2.0 a\n\n  q1 Q0 d1 2 1 a  \n")  # any whitespace
    assert read_run(path).scores() == {"q1": {"d2": 2.0, "d1": 1.0}}
    for bad, why in (("q1 Q0 d2 1 2.0\n", "5 columns"), ("q1 Q0 d2 one 2.0 a\n", "invalid literal")):
        path.write_text("q1 Q0 d1 1 3 a\n" + bad)
        with pytest.raises(ValueError, match=f"run.trec:2: not a TREC run line .*{why}"):
            read_run(path)
    with pytest.raises(ValueError, match="docid 'd 1' is empty or holds whitespace"):
        write_run(tmp_path / "x.trec", {"q": [("d 1", 1.0)]}, "tag")
    assert not (tmp_path / "x.trec").exists()


INDEX = Path(__file__).resolve().parent.parent / "indexes" / "beir-scifact"


@pytest.mark.skipif(not INDEX.is_dir(), reason="needs indexes/beir-scifact (bash scripts/setup.sh)")
def test_the_main_job_prints_only_the_warnings_it_means(tmp_path):
    # The README's first command, on one query, in a fresh process (Pyserini's sources compile there).
    argv = ["compare", "--index", str(INDEX), "--dataset", "beir/scifact/test", "--queries", "1"]
    argv += ["--methods", "std", "--budgets", "5", "--out", str(tmp_path / "main")]
    quiet = subprocess.run([sys.executable, "-m", "rsd_rerank.cli", *argv], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    # Progress bars stay (they redraw with \r); every other line is one of the project's own warnings.
    lines = [line for line in quiet.stderr.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]
    assert all(line.startswith("WARNING passages were cut below 300 words") for line in lines), lines
    assert len(lines) <= 1
    verbose = subprocess.run([sys.executable, "-m", "rsd_rerank.cli", "-v", *argv], capture_output=True, text=True)
    assert verbose.returncode == 0 and "vector incubator module" in verbose.stderr


def test_measures_are_parsed_by_ir_measures(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "retrieve",
                "--index",
                "x",
                "--dataset",
                "beir/scifact/test",
                "--output",
                "o",
                "--measures",
                "nDCG@10 Bogus@3",
            ]
        )
    assert "'Bogus@3' is not an ir_measures measure" in capsys.readouterr().err
