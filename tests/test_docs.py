"""The front door and the docs stay true: every fenced shell or Python block of the README and of
``docs/`` is run or checked, so that a renamed flag or a moved file breaks the build, not the reader.

A block is handled by the marker on the line above its fence:

- ``<!-- docs-test: run -->``: executed, from the repository root (shell blocks with bash, Python
  blocks in a fresh interpreter); for commands that take seconds on the embedded model.
- ``<!-- docs-test: skip REASON -->``: not touched (say why: a GPU, an hour of training).
- no marker: *checked*. Every ``rsd-rerank`` command is parsed by the real parser (options, choices,
  types; nothing runs). Every ``python SCRIPT …`` must name an existing script whose ``--help`` (of
  its sub-command, if it has one) lists each option the command uses. Every ``bash FILE`` must name
  an existing file. Python blocks are compiled and their imports executed. Any other command fails
  the test until the block is marked.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
MARKER = re.compile(r"<!-- docs-test: (run|skip)( [^>]*)? -->\s*$")
SHELL_UTILITIES = {"head", "cp", "source", "export", "mkdir", "ray", "cd"}


def _blocks() -> list[tuple[str, str, str, str | None]]:
    """(page:line, language, body, marker) of every fenced block."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip(" ").splitlines()
            marker = MARKER.search(before[-1]) if before else None
            body = "\n".join(row[len(m.group("indent")) :] for row in m.group("body").splitlines())
            where = f"{page.relative_to(ROOT)}:{line}"
            out.append((where, m.group("lang").strip(), body, marker.group(1) if marker else None))
    return out


BLOCKS = _blocks()


def _commands(body: str) -> list[list[str]]:
    """The shell commands of a block as argument lists: continuations joined, comments, environment
    assignments and ``[optional]`` brackets dropped, output redirections cut."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;", line):
            words = shlex.split(part.replace("[", " ").replace("]", " "))
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if ">" in words:
                words = words[: words.index(">")]
            if words:
                commands.append(words)
    return commands


@functools.cache
def _script_options(script: str, sub: str | None) -> frozenset[str]:
    argv = [sys.executable, str(ROOT / script), *([sub] if sub else []), "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(argv[1:])} failed:\n{done.stderr[-2000:]}"
    return frozenset(re.findall(r"--[a-z0-9][a-z0-9-]*", done.stdout))


@functools.cache
def _subcommands(script: str) -> frozenset[str]:
    help_text = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    ).stdout
    choices = re.search(r"\{([a-z,-]+)\}", help_text)
    return frozenset(choices.group(1).split(",")) if choices else frozenset()


def _check_command(where: str, words: list[str]) -> None:
    from rsd_rerank.cli import build_parser

    program = words[0]
    if program.endswith("rsd-rerank"):
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as err:
            pytest.fail(f"{where}: `{shlex.join(words)}` does not parse (exit {err.code})")
    elif program.endswith("python") or program.endswith("python3"):
        if words[1] == "-m":
            import importlib.util

            assert importlib.util.find_spec(words[2]), f"{where}: no module {words[2]}"
            return
        script = words[1]
        assert script.endswith(".py"), f"{where}: `{shlex.join(words)}`: mark the block or name a script"
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        sub = words[2] if len(words) > 2 and words[2] in _subcommands(script) else None
        known = _script_options(script, sub)
        used = {w.split("=", 1)[0] for w in words[2:] if w.startswith("--")}
        assert used <= known, f"{where}: {script} {sub or ''} has no option {sorted(used - known)}"
    elif program == "bash":
        assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} does not exist"
    else:
        assert program in SHELL_UTILITIES, f"{where}: `{program}` is neither run nor checked; mark the block"


def _ids(kind: str) -> list:
    return [
        pytest.param(where, lang, body, id=where)
        for where, lang, body, marker in BLOCKS
        if (marker == "run") == (kind == "run") and marker != "skip"
    ]


def test_every_block_has_a_language():
    """A block without a language is neither run nor checked."""
    bare = [where for where, lang, _, marker in BLOCKS if not lang and marker != "skip"]
    assert not bare, f"give these blocks a language (bash, python, text…) or a skip marker: {bare}"


@pytest.mark.parametrize("where,lang,body", _ids("check"))
def test_checked_blocks_name_options_and_files_that_exist(where, lang, body):
    if lang in ("bash", "sh", "shell", "console"):
        for words in _commands(body):
            _check_command(where, words)
    elif lang == "python":
        compile(body, where, "exec")
        imports = "\n".join(line for line in body.splitlines() if re.match(r"(from \S+ )?import ", line))
        exec(compile(imports, where, "exec"), {})


@pytest.mark.parametrize("where,lang,body", _ids("run"))
def test_run_blocks_run(where, lang, body):
    # Run blocks write under runs/readme-*: cleared first, as a reader's second paste would need.
    (ROOT / "runs").mkdir(exist_ok=True)  # set-up makes it; a fresh clone in CI has not run the main job
    for old in (ROOT / "runs").glob("readme-*"):
        old.unlink()
    argv = ["bash", "-euo", "pipefail", "-c", body] if lang in ("bash", "sh") else [sys.executable, "-c", body]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


def test_the_checker_refuses_a_renamed_flag_and_an_unmarked_command():
    """The check above is real: a flag the parser lacks, and a command it cannot check, both fail."""
    with pytest.raises(pytest.fail.Exception):
        _check_command("x", [".venv/bin/rsd-rerank", "rerank", "--requests", "r.jsonl", "--outptu", "o.trec"])
    with pytest.raises(AssertionError, match="mark the block"):
        _check_command("x", ["curl", "https://example.org"])
    with pytest.raises(AssertionError, match="does not exist"):
        _check_command("x", ["bash", "scripts/no-such-script.sh"])


def test_the_readme_is_a_front_door():
    """At most 220 lines; the two commands open it; a RankLLM snippet within 120 lines; every docs page linked."""
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 220, len(lines)
    first = "\n".join(lines[:8])
    assert "bash scripts/setup.sh && .venv/bin/rsd-rerank compare" in first
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in first
    snippet = next(i for i, line in enumerate(lines) if "Reranker(RSDReranker(" in line)
    assert snippet < 120
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"


def test_ci_runs_the_readmes_test_command():
    test_command = (ROOT / "README.md").read_text().splitlines()[4]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_reproducing_names_every_shipped_artefact():
    page = (ROOT / "docs" / "reproducing.md").read_text()
    for folder in ("checkpoints", "rerankers"):
        for bundled in (ROOT / "rsd_rerank" / folder).iterdir():
            assert f"rsd_rerank/{folder}/{bundled.name}/" in page, f"{bundled} has no command in docs/reproducing.md"
    results = ROOT / "benchmarks" / "results"
    stems = {re.sub(r"(\.claims\.jsonl|\.json|\.md|\.png)$", "", p.name) for p in results.iterdir() if p.is_file()}
    stems |= {f"{p.name}/" for p in results.iterdir() if p.is_dir()}
    named = set(re.findall(r"`([a-z0-9_./-]+)`", page))
    missing = sorted(s for s in stems if s not in named)
    assert not missing, f"docs/reproducing.md does not say how these were made: {missing}"
