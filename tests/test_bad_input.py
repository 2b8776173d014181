"""Nothing lost, nothing silent: every numbered case of the bad-input issue, through the CLI as a user meets it."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from rsd_rerank.cli import main
from rsd_rerank.files import locked


@pytest.fixture
def requests_file(tmp_path, requests_json):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    return path


def _rerank(requests, output, *extra):
    return main(
        [
            "rerank",
            "--model",
            "random-llama",
            "--method",
            "std",
            "--requests",
            str(requests),
            "--output",
            str(output),
            *extra,
        ]
    )


# 1. train --out holding an agent


def test_train_refuses_to_overwrite_an_agent(tmp_path, requests_file, capsys):
    # The README's workflow copies a bundled agent's files into a folder: training there again must not eat it.
    from rsd_rerank.agent import BUNDLED

    out = tmp_path / "agent"
    out.mkdir()
    for name in ("agent.json", "model.safetensors"):
        (out / name).write_bytes((BUNDLED / "random-llama" / name).read_bytes())
    before = (out / "model.safetensors").read_bytes()
    args = ["train", "--model", "random-llama", "--requests", str(requests_file), "--out", str(out)]
    assert main(args) == 2
    assert "holds an agent (agent.json, model.safetensors); pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


# 2. two writers of one output


def test_a_second_writer_of_the_same_output_is_refused(tmp_path, requests_file, capsys):
    out = tmp_path / "run.trec"
    with locked(out):
        assert _rerank(requests_file, out) == 2
    assert "another run is writing" in capsys.readouterr().err
    assert not out.exists()
    assert _rerank(requests_file, out) == 0  # the lock is gone with its holder
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# 3. output = input


def test_an_output_that_is_an_input_is_refused(tmp_path, requests_file, capsys):
    before = requests_file.read_text()
    link = tmp_path / "link.jsonl"
    link.symlink_to(requests_file)
    for output in (requests_file, link, tmp_path / "." / "requests.jsonl"):
        assert _rerank(requests_file, output) == 2
        assert "is both an input and an output" in capsys.readouterr().err
    assert requests_file.read_text() == before
    args = ["retrieve", "--index", str(tmp_path / "i"), "--topics", str(tmp_path / "t.tsv")]
    assert main([*args, "--output", str(tmp_path / "r"), "--requests", str(tmp_path / "r")]) == 2
    assert "is given for two outputs of this command" in capsys.readouterr().err


# 4. file modes


def test_a_rewritten_output_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path, requests_file):
    from rsd_rerank.methods import DecodingConfig

    out = tmp_path / "run.trec"
    old = f"other Q0 d1 1 1 {DecodingConfig('std').run_tag}\n"
    out.write_text(old)
    out.chmod(0o640)
    assert _rerank(requests_file, out) == 2  # an existing run is never overwritten silently
    assert _rerank(requests_file, out, "--resume") == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_text().startswith(old) and out.read_text() != old
    fresh = tmp_path / "fresh.trec"
    umask = os.umask(0o022)
    try:
        assert _rerank(requests_file, fresh) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


# 6. ids with whitespace


def test_ids_with_whitespace_are_named(tmp_path, requests_json, capsys):
    bad = json.loads(json.dumps(requests_json[0]))
    bad["candidates"][3]["docid"] = "doc 3"
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    assert _rerank(path, tmp_path / "o") == 2
    assert "docid 'doc 3'" in capsys.readouterr().err


# 7. integer options


@pytest.mark.parametrize(
    "option",
    [
        ["rerank", "--max-passage-words", "0"],
        ["rerank", "--max-passage-words", "-5"],
        ["rerank", "--batch-size", "0"],
        ["rerank", "--budget", "-1"],
        ["pipeline", "--queries", "0"],
        ["pipeline", "--queries", "-1"],
        ["pipeline", "--hits", "0"],
        ["pipeline", "--rerank-top", "0"],
        ["retrieve", "--candidates", "0"],
        ["train", "--group", "0"],
    ],
)
def test_integer_options_are_range_checked_at_parse_time(option, capsys):
    base = {
        "rerank": ["--requests", "r", "--output", "o"],
        "pipeline": ["--index", "i", "--topics", "t", "--output", "o"],
        "retrieve": ["--index", "i", "--topics", "t", "--output", "o"],
        "train": ["--requests", "r", "--out", "o"],
    }[option[0]]
    with pytest.raises(SystemExit) as exit_:
        main([option[0], *base, *option[1:]])
    assert exit_.value.code == 2
    assert "must be >=" in capsys.readouterr().err


# 8. topics files


def test_topics_split_on_the_first_tab_only(tmp_path):
    from rsd_rerank.integrations import datasets

    path = tmp_path / "t.tsv"
    path.write_text('q1\tsays "hello\nq2\tan\ttabbed query\nq3\tlast\n')
    assert datasets.queries(path) == {"q1": 'says "hello', "q2": "an\ttabbed query", "q3": "last"}
    path.write_text("q1\tfine\nq2 no tab here\n")
    with pytest.raises(ValueError, match=r"t.tsv:2: a topics line is qid<TAB>text"):
        datasets.queries(path)


# 9. empty queries, empty method lists


def test_empty_query_text_warns_and_empty_methods_fail(tmp_path, requests_json, caplog, capsys):
    from rsd_rerank.runs import read_requests

    empty = json.loads(json.dumps(requests_json[0]))
    empty["query"]["text"] = " "
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(empty) + "\n")
    read_requests(path)
    assert "1 requests have an empty query text" in caplog.text
    assert main(["compare", "--requests", str(path), "--methods", ",", "--out", str(tmp_path / "c")]) == 2
    assert "names no method" in capsys.readouterr().err


# 10. corrupt or missing files


def test_corrupt_files_are_one_line_naming_the_file(tmp_path, requests_file, capsys, smollm2):
    from rsd_rerank.targets import embedded_model_dir

    model = tmp_path / "model"
    model.mkdir()
    for f in embedded_model_dir().glob("*.json"):
        (model / f.name).write_bytes(f.read_bytes())
    args = ["rerank", "--requests", str(requests_file), "--output", str(tmp_path / "o"), "--model", str(model)]
    assert main(args) == 2
    assert "cannot load the model in" in capsys.readouterr().err
    (model / "model.safetensors").write_bytes((embedded_model_dir() / "model.safetensors").read_bytes()[:100_000])
    assert main(args) == 2
    assert "is corrupt (SafetensorError" in capsys.readouterr().err

    template = tmp_path / "t.yaml"
    template.write_text("method: singleturn_listwise\nsystem_message: [unclosed\n")
    assert _rerank(requests_file, tmp_path / "o", "--template", str(template)) == 2
    assert "is not valid YAML" in capsys.readouterr().err

    from rsd_rerank.agent import BUNDLED

    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "agent.json").write_text(json.dumps({"target": "x"}))
    (agent / "model.safetensors").write_bytes((BUNDLED / "random-llama" / "model.safetensors").read_bytes()[:1000])
    base = ["rerank", "--model", "random-llama", "--requests", str(requests_file), "--output", str(tmp_path / "o")]
    assert main([*base, "--agent", str(agent)]) == 2
    assert "is not an agent checkpoint" in capsys.readouterr().err
    (agent / "agent.json").write_text((BUNDLED / "random-llama" / "agent.json").read_text())
    assert main([*base, "--agent", str(agent)]) == 2
    assert "is not an agent checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_corrupt_target_cache_entry_is_computed_again(tiny_llama, requests_json, tmp_path, caplog):
    from dacite import from_dict
    from rank_llm.data import Request

    from rsd_rerank.prompt import PromptConfig
    from rsd_rerank.training.cache import cached_queries

    requests = [from_dict(data_class=Request, data=r) for r in requests_json]
    # Cloned: the loaded tensors may map the files, and the test cuts one in place.
    first = [q.target.clone() for q in cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path)]
    (entry, _) = sorted(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:50])
    again = cached_queries(tiny_llama, requests, PromptConfig(), 2, tmp_path)
    assert "unreadable" in caplog.text
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b.target)


# 11. unwritable outputs


def test_unwritable_outputs_fail_before_any_work(tmp_path, requests_file, capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "dir", "is a folder; give a file path"),
        (tmp_path / "file" / "run.trec", "is a file, not a folder"),
    ]
    for output, message in cases:
        assert _rerank(requests_file, output) == 2
        assert message in capsys.readouterr().err
    args = ["train", "--requests", str(requests_file), "--out", str(tmp_path / "file")]
    assert main(args) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_read_only_folder_is_refused(tmp_path, requests_file, capsys):
    if os.geteuid() == 0:
        pytest.skip("root may write into any folder: this check only binds other users")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    assert _rerank(requests_file, folder / "run.trec") == 2
    assert "is not writable" in capsys.readouterr().err


# 12. the first run offline


def test_offline_first_run_is_one_line_saying_how_to_get_the_model(tmp_path, monkeypatch, requests_file, capsys):
    import subprocess

    def offline(cmd, *args, **kwargs):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setenv("RSD_RERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", offline)
    assert main(["rerank", "--requests", str(requests_file), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bash scripts/setup.sh" in err and "random-llama needs" in err


# 13. Ctrl-C


def test_ctrl_c_exits_130_with_outputs_whole(tmp_path, requests_file, monkeypatch, capsys):
    from rsd_rerank.integrations import pipeline
    from rsd_rerank.methods import DecodingConfig

    out = tmp_path / "run.trec"
    previous = f"other Q0 d1 1 1 {DecodingConfig('std').run_tag}\n"
    out.write_text(previous)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(pipeline, "rerank_windowed", interrupted)
    assert _rerank(requests_file, out, "--resume") == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_text() == previous
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_jvm_leaves_ctrl_c_to_python_and_writes_no_crash_report_here(tmp_path):
    from rsd_rerank.integrations.pyserini import jvm_options

    options = jvm_options(["-Xmx4g", "--add-modules=jdk.incubator.vector"], has_vector_module=False)
    assert options[0] == "-Xmx4g" and "--add-modules=jdk.incubator.vector" not in options
    assert "-Xrs" in options
    (error_file,) = [o for o in options if o.startswith("-XX:ErrorFile=")]
    assert not error_file.removeprefix("-XX:ErrorFile=").startswith(os.getcwd())
    assert jvm_options(options, has_vector_module=False) == options  # idempotent
    # quiet: Pyserini's logging configuration, plus the line that silences Lucene's vector notice
    base = tmp_path / "logging.properties"
    base.write_text("handlers=java.util.logging.ConsoleHandler\n.level=WARNING\n")
    quiet = jvm_options(["-Xmx4g", f"-Djava.util.logging.config.file={base}"], has_vector_module=False, quiet=True)
    (logging_option,) = [o for o in quiet if o.startswith("-Djava.util.logging.config.file=")]
    text = Path(logging_option.split("=", 1)[1]).read_text()
    assert text.startswith(base.read_text()) and "vectorization.VectorizationProvider.level = SEVERE" in text
    assert jvm_options(quiet, has_vector_module=False, quiet=True) == quiet


# 14. qrels not available offline


def test_missing_qrels_are_a_clear_error(monkeypatch):
    from rsd_rerank.integrations import datasets

    class Dataset:
        def has_qrels(self):
            return True

        def qrels_iter(self):
            raise KeyError("beir/scifact/train qrels")

    monkeypatch.setattr(datasets, "_dataset", lambda source: Dataset())
    with pytest.raises(ValueError, match="the qrels of beir/scifact/train are not available here.*--qrels"):
        datasets.qrels("beir/scifact/train")


# The last holes (issue 24), each through the door a user knocks on.


def test_finetune_overwrite_keeps_the_finished_companion_when_the_input_is_bad(tmp_path, requests_json, capsys):
    done = tmp_path / "DONE"
    done.mkdir()
    (done / "heads.json").write_text("{}")
    (done / "heads.safetensors").write_bytes(b"old heads")
    record = dict(requests_json[0])
    record["candidates"] = [dict(c, docid=f"d{i}") for i, c in enumerate(requests_json[0]["candidates"] * 2)][:27]
    k27 = tmp_path / "k27.jsonl"
    k27.write_text(json.dumps(record) + "\n")
    argv = ["finetune", "--method", "medusa", "--model", "random-llama", "--requests", str(k27), "--out", str(done)]
    assert main([*argv, "--overwrite"]) == 2
    assert "27" in capsys.readouterr().err
    assert (done / "heads.json").read_text() == "{}" and (done / "heads.safetensors").read_bytes() == b"old heads"


def test_an_unreachable_ray_address_fails_at_once_and_frees_the_output(tmp_path, requests_file):
    import subprocess
    import sys

    out = tmp_path / "run.trec"
    argv = ["rerank", "--model", "random-llama", "--method", "std", "--requests", str(requests_file)]
    argv += ["--output", str(out), "--workers", "2", "--ray-address", "127.0.0.1:1", "--connect-timeout", "5"]
    code = "import sys; from rsd_rerank.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "--ray-address 127.0.0.1:1" in line and "ray start --head" in line
    assert list(tmp_path.iterdir()) == [requests_file]  # no run, no lock file


def test_an_output_that_is_not_a_regular_file_is_refused_unread(tmp_path, requests_file, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for output in ("/dev/full", str(fifo)):
        assert _rerank(requests_file, output, "--resume") == 2
        assert "is not a regular file" in capsys.readouterr().err
    from rsd_rerank.runs import read_run

    with pytest.raises(ValueError, match="not a regular file"):
        read_run(fifo)  # would block forever if it were opened


def test_candidates_without_text_are_kept_below_in_input_order_with_one_warning(
    tmp_path, requests_json, caplog, capsys
):
    record = json.loads(json.dumps(requests_json[0]))
    for i in (2, 5, 11):
        record["candidates"][i]["doc"] = {"contents": "  "}
    blank = json.loads(json.dumps(record))
    blank["query"]["qid"] = "blank"
    for c in blank["candidates"]:
        c["doc"] = {"contents": ""}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(blank) + "\n")
    out = tmp_path / "run.trec"
    with caplog.at_level("WARNING"):
        assert _rerank(path, out) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "have no text" in r.getMessage()]
    assert "23 candidates in 2 requests have no text" in warning
    from rsd_rerank.runs import read_run

    run = read_run(out).hits
    docids = [c["docid"] for c in record["candidates"]]
    assert [d for d, _ in run[record["query"]["qid"]]][-3:] == [docids[2], docids[5], docids[11]]
    assert [d for d, _ in run["blank"]] == [c["docid"] for c in blank["candidates"]]


def test_an_unknown_model_is_refused_offline_on_every_route(tmp_path, requests_file, capsys, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a model hub was asked")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    argv = ["rerank", "--model", "no-such-model", "--requests", str(requests_file), "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    assert main(["rank-llm", "rerank", "--model-path", "rsd:no-such-target", "--requests-file", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("unknown target" in line and "HF_HUB_OFFLINE=0" in line for line in err)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"_id": "d1", "text": "a"}\n{bad\n', "corpus.jsonl:2: not a JSON corpus line"),
    ],
)
def test_a_bad_corpus_line_is_named_by_file_and_line(tmp_path, content, expected):
    from rsd_rerank.integrations.datasets import doc_contents

    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected):
        doc_contents(path, {"d1"})


def test_request_files_name_the_encoding_the_request_and_the_candidate(tmp_path, requests_json):
    from rsd_rerank.runs import read_requests

    utf16 = tmp_path / "r16.jsonl"
    utf16.write_text(json.dumps(requests_json[0]) + "\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"r16.jsonl is not UTF-8 text .*save it as UTF-8"):
        read_requests(utf16)
    record = json.loads(json.dumps(requests_json[0]))
    record["candidates"][3]["doc"] = {"url": "x"}
    no_text = tmp_path / "no_text.json"
    no_text.write_text(json.dumps([record]))
    docid = record["candidates"][3]["docid"]
    with pytest.raises(ValueError, match=rf"element 0 \(qid {record['query']['qid']}\): candidate '{docid}' has none"):
        read_requests(no_text)
    record["candidates"][3] = "just a passage"
    as_string = tmp_path / "as_string.json"
    as_string.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match="candidate 3 is a str; each candidate is an object"):
        read_requests(as_string)


def _no_model(monkeypatch):
    from rsd_rerank.cli import difficulty, finetune, options, train

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    for module in (options, train, finetune, difficulty):  # every room that loads a target
        monkeypatch.setattr(module, "target_from", refuse)


def test_run_file_and_window_mistakes_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    topics = tmp_path / "t.tsv"
    topics.write_text("q1\tquery\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\nq1 Q0 d1 3 0.5 bm25\n")
    base = ["rerank", "--run", str(run), "--topics", str(topics), "--corpus", str(corpus)]
    assert main([*base, "--output", str(tmp_path / "o")]) == 2
    assert "run.trec:3: query q1 lists document d1 again (first on line 1)" in capsys.readouterr().err
    run.write_text("q1 Q0 d1 1 2.0 bm25\n")
    for extra, named in (
        (["--window-size", "1"], "--window-size 1"),
        (["--stride", "15", "--window-size", "10"], "--stride 15 is larger than --window-size 10"),
    ):
        assert main([*base, "--output", str(tmp_path / "o"), *extra]) == 2
        assert named in capsys.readouterr().err
    run.write_text("")
    assert main([*base, "--output", str(tmp_path / "o")]) == 2  # one rule: empty input is an error everywhere
    assert "holds no run lines" in capsys.readouterr().err
    missing = ["retrieve", "--index", str(tmp_path), "--topics", str(tmp_path / "missing.tsv")]
    assert main([*missing, "--output", str(tmp_path / "r")]) == 2
    assert "missing.tsv' is neither an existing file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_overwrite_replaces_a_run_only_when_the_new_one_is_complete(tmp_path, requests_file, capsys, monkeypatch):
    import rsd_rerank.runs

    out = tmp_path / "run.trec"
    out.write_text("old Q0 d1 1 1 rsd-rerank.gsd3\n")
    out.chmod(0o640)
    assert _rerank(requests_file, out) == 2
    assert "--overwrite to replace it" in capsys.readouterr().err
    assert _rerank(requests_file, out, "--resume", "--overwrite") == 2
    seen = []
    write_run = rsd_rerank.runs.write_run

    def watched(path, *args, **kwargs):
        seen.append(out.read_text())  # what a reader of --output finds while the new run is written
        return write_run(path, *args, **kwargs)

    monkeypatch.setattr("rsd_rerank.integrations.pipeline.write_run", watched)
    assert _rerank(requests_file, out, "--overwrite", "--batch-size", "1") == 0
    assert len(seen) == 2 and all(text == "old Q0 d1 1 1 rsd-rerank.gsd3\n" for text in seen)
    assert "old" not in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_errors_name_the_file_and_a_read_only_model_cache_names_the_fix(tmp_path, monkeypatch):
    import errno

    from rsd_rerank.files import atomic_write
    from rsd_rerank.targets import embedded_model_dir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", full)
        with pytest.raises(OSError, match=r"cannot write .*run.trec: No space left on device"):
            atomic_write(tmp_path / "run.trec", "x\n")
    assert list(tmp_path.iterdir()) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setenv("RSD_RERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(RuntimeError, match=r"model cache .*cache/models is not writable .*set RSD_RERANK_CACHE"):
        embedded_model_dir()


# Issue #31: the last 11 probes


@pytest.mark.parametrize(
    "spec, named",
    [
        ("layers=100000", "random-llama is capped at 2B"),
        (f"hidden={10**9}", "random-llama is capped at 2B"),
        ("hidden=6", "hidden must be a multiple of 8"),
        ("init=-0.1", "init must be a finite number >= 0"),
        ("init=nan", "init must be a finite number >= 0"),
        ("layers=0", "layers must be >= 1"),
    ],
)
def test_random_llama_bounds_are_checked_by_name_before_any_work(tmp_path, requests_file, capsys, spec, named):
    out = tmp_path / "out" / "run.trec"
    out.parent.mkdir()
    args = ["rerank", "--model", f"random-llama:{spec}", "--requests", str(requests_file), "--output", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--model random-llama:{spec}" in err and named in err
    assert list(out.parent.iterdir()) == []  # no lock, no run


@pytest.mark.parametrize("content", ['{"ids": [1, 2]}', "[]", '"text"', '{"messages": 3}'])
def test_a_prompt_cache_entry_of_another_shape_is_rebuilt_with_a_warning(smollm2, query_docs, content, caplog):
    from rsd_rerank import prompt_cache
    from rsd_rerank.prompt import PromptConfig, build_prompt

    query, docs = query_docs[0]
    config = PromptConfig(max_passage_words=7)
    good = build_prompt(smollm2.tokenizer, query, docs, config)
    paths = sorted(prompt_cache.folder().glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    paths[-1].write_text(content)
    assert build_prompt(smollm2.tokenizer, query, docs, config).token_ids == good.token_ids
    assert "is not a prompt" in caplog.text and paths[-1].name in caplog.text
    assert json.loads(paths[-1].read_text())["token_ids"] == good.token_ids  # stored again, whole


def test_rank_llm_says_why_it_stops_on_a_missing_requests_file(tmp_path, capsys):
    missing = tmp_path / "req" / "nope.jsonl"
    args = ["rank-llm", "rerank", "--model-path", "rsd:random-llama", "--requests-file", str(missing)]
    assert main([*args, "--output-trec-file", str(tmp_path / "t.trec")]) == 2
    assert f"--requests-file {missing}: no such file" in capsys.readouterr().err


def test_a_template_without_the_query_placeholder_is_refused(tmp_path, requests_file, capsys):
    import yaml

    from rsd_rerank.prompt import template_path

    template = yaml.safe_load(template_path("rank_zephyr_alpha_template.yaml").read_text())
    del template["prefix"], template["suffix"]
    path = tmp_path / "noquery.yaml"
    path.write_text(yaml.safe_dump(template))
    assert _rerank(requests_file, tmp_path / "run.trec", "--template", str(path)) == 2
    assert "has no {query} placeholder in its prefix or suffix" in capsys.readouterr().err


def _run_inputs(tmp_path, run_text: str, texts: dict[str, str]):
    run, topics, corpus = tmp_path / "in.trec", tmp_path / "topics.tsv", tmp_path / "c.jsonl"
    run.write_bytes(run_text.encode("utf-8"))
    topics.write_text("1\tdo proteins fold\n")
    corpus.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in texts.items()))
    return ["rerank", "--model", "random-llama", "--method", "std", "--run", str(run), "--topics", str(topics),
            "--corpus", str(corpus), "--output", str(tmp_path / "out.trec")]  # fmt: skip


def test_textless_hits_of_a_run_get_the_request_files_warning(tmp_path, caplog):
    lines = "".join(f"1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(4))
    args = _run_inputs(tmp_path, lines, {"d0": "proteins fold", "d1": "", "d2": "cells", "d3": " "})
    assert main(args) == 0
    assert "2 candidates in 1 requests have no text" in caplog.text
    assert len((tmp_path / "out.trec").read_text().splitlines()) == 4


def test_a_byte_order_mark_is_dropped_from_a_run(tmp_path, caplog):
    lines = "\ufeff" + "".join(f"1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(3))
    args = _run_inputs(tmp_path, lines, {"d0": "proteins fold", "d1": "cells", "d2": "genes"})
    assert main([*args, "--keep-missing"]) == 0
    qids = {line.split()[0] for line in (tmp_path / "out.trec").read_text().splitlines()}
    assert qids == {"1"} and "no topic" not in caplog.text


def test_a_failed_finetune_overwrite_leaves_nothing_beside_its_folder(tmp_path, requests_file, capsys):
    out = tmp_path / "companion"
    out.mkdir()
    (out / "heads.json").write_text("{}")
    args = ["finetune", "--model", "random-llama", "--method", "first-ft", "--requests", str(requests_file),
            "--template", "rank_zephyr_template.yaml", "--out", str(out), "--overwrite"]  # fmt: skip
    assert main(args) == 2
    assert "single-token identifiers" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["companion", "requests.jsonl"]
    assert (out / "heads.json").read_text() == "{}"


def test_an_interrupted_overwrites_staging_file_is_cleaned_by_the_next_run(tmp_path, requests_file, caplog):
    out = tmp_path / "run.trec"
    staging = tmp_path / ".run.trec.new"
    staging.write_text("1 Q0 half 1 1 x\n")  # what a killed --overwrite leaves
    assert _rerank(requests_file, out) == 0
    assert not staging.exists() and "unfinished replacement" in caplog.text
    staging.write_text("1 Q0 half 1 1 x\n")
    assert _rerank(requests_file, out, "--overwrite") == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_batch_invariant_refuses_the_heads_tree_passes_before_any_work(tmp_path, requests_file, capsys):
    out = tmp_path / "run.trec"
    assert _rerank(requests_file, out, "--method", "medusa", "--batch-invariant") == 2
    assert "--method medusa verifies trees of drafts" in capsys.readouterr().err
    argv = ["compare", "--requests", str(requests_file), "--methods", "gsd,blockwise", "--batch-invariant"]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "--method blockwise verifies trees" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [requests_file]
