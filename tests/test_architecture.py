"""The house rules that code review would otherwise have to catch: an acyclic import graph, and a
core that never imports the integrations' heavy dependencies."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"rsd_rerank": ROOT / "rsd_rerank", "rsd_rerank.integrations": ROOT / "integrations"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every module this file imports, at any depth of the file (function-level imports included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in _imports(path, module):
            parts = name.split(".")
            for n in range(1, len(parts) + 1):
                target = ".".join(parts[:n])
                # Importing a.b.c runs a.b's __init__ first, unless the importer lives inside a.b (then
                # a.b is already being initialised and the edge is no cycle).
                inside = module == target or module.startswith(target + ".")
                if target in modules and target != module and not (inside and n < len(parts)):
                    edges.add(target)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "rsd_rerank.session" in graph["rsd_rerank.methods"]  # the graph sees real edges
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    # The previous layout: decoding.rank() imported the agent inside a function, and the agent imported decoding.
    graph = {"a.decoding": {"a.agent"}, "a.agent": {"a.decoding", "a.session"}, "a.session": set()}
    assert _cycle(graph) == ["a.agent", "a.decoding", "a.agent"]
    (tmp_path / "m.py").write_text("def f():\n    from rsd_rerank.agent import x\n")
    assert "rsd_rerank.agent" in _imports(tmp_path / "m.py", "rsd_rerank.m")


def test_the_core_never_imports_pyserini_ir_datasets_or_ray():
    core = {m: p for m, p in _modules().items() if not m.startswith("rsd_rerank.integrations")}
    for module, path in core.items():
        heavy = {n for n in _imports(path, module) if n.split(".")[0] in ("pyserini", "ir_datasets", "ray", "jnius")}
        assert not heavy, f"{module} imports {heavy}"


def test_proposers_and_files_import_nothing_of_the_project_above_them():
    graph = import_graph()
    assert graph["rsd_rerank.files"] == set()
    assert graph["rsd_rerank.proposers"] == set()
    assert "rsd_rerank.methods" not in graph["rsd_rerank.decoding"]  # the loop knows no method names


def test_mutation_check_catches_every_mutant():
    # scripts/mutants.py: each deliberate engine bug (no prefix reuse, no bonus item, proposer ignored,
    # i* off by one, a Jacobi slot read from the next row, positions that ignore left padding, a query leaving the batch a step early, branch
    # tokens that see their siblings or sit one position late, RankLLM history kept by default, batch-invariant
    # passes ignored) must
    # fail the tests that guard it, in a temporary copy of the package.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mutants.py")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 20 mutants caught" in done.stdout


def test_the_wheel_lists_every_package_and_its_data():
    """A package missing from pyproject.toml is missing from the wheel (editable installs hide it)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join([package, *init.parent.relative_to(folder).parts])
        for package, folder in PACKAGES.items()
        for init in folder.rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk
    patterns = setuptools["package-data"]["rsd_rerank"]
    data = [p for p in (ROOT / "rsd_rerank").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    data = [p.relative_to(ROOT / "rsd_rerank") for p in data if "__pycache__" not in p.parts]
    unshipped = [str(p) for p in data if not any(p.match(pattern) for pattern in patterns)]
    assert not unshipped, f"package data not in pyproject.toml's package-data: {unshipped}"


def test_help_and_docstrings_name_the_methods_the_registry_has():
    """Help is generated from field docstrings: a list of methods there must be the registry's, whole."""
    import re

    from rsd_rerank.cli import build_parser, field_docs
    from rsd_rerank.integrations import rank_llm
    from rsd_rerank.methods import DecodingConfig
    from rsd_rerank.registry import BUDGETED, METHODS, REGISTRY

    budget_help = field_docs(DecodingConfig)["budget"]
    assert set(re.findall(r"[a-z]+(?:-[a-z]+)*", budget_help.split("(", 1)[1])) >= set(BUDGETED)
    assert {m for m in METHODS if f"``{m}``" in rank_llm.__doc__} == set(METHODS)
    rerank = build_parser()._subparsers._group_actions[0].choices["rerank"]
    (method,) = [a for a in rerank._actions if a.dest == "method"]
    assert set(method.choices) == set(METHODS)
    assert all(f"{name}: {m.help}" in method.help for name, m in REGISTRY.items())


def test_every_method_list_is_read_from_the_one_registry():
    """docs/methods.md's table names the registry's methods, once each, in its order; the CLI's,
    compare's, finetune's and fidelity.py's lists are derived from it."""
    import re

    from rsd_rerank.registry import BASELINES, COMPARE_METHODS, FINETUNES, REGISTRY, TRAINED_BASELINES
    from rsd_rerank.training.baselines import FINETUNED

    page = (ROOT / "docs" / "methods.md").read_text()
    table = page.split("## Methods (`--method`)", 1)[1].split("\n\n", 2)[1]
    named = [n for row in table.splitlines()[2:] for n in re.findall(r"`([a-z-]+)`", row.split("|")[1])]
    assert named == list(REGISTRY)
    assert list(COMPARE_METHODS)[2:] == list(REGISTRY)
    assert FINETUNED == (*FINETUNES, "reranker") and set(FINETUNES) <= set(TRAINED_BASELINES)
    assert set(TRAINED_BASELINES) <= set(BASELINES) <= set(REGISTRY)


def test_the_module_table_names_every_module():
    """Every module of the package is named in docs/architecture.md's module table: by its path, or in the row of
    its folder by its file name; and every path the table names exists."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    table = "| module |" + page.split("\n| module |", 1)[1].split("\n\n", 1)[0]
    rows = {row.split("|")[1]: row for row in table.splitlines()[2:]}
    for module, path in _modules().items():
        relative = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            continue
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        named = any(f"`{relative}`" in key for key in rows) or any(
            f"`{folder}`" in key and f"`{path.name}`" in row for key, row in rows.items()
        )
        assert named, f"{relative} ({module}) is not in docs/architecture.md's module table"
    for named_path in re.findall(r"`((?:rsd_rerank|integrations|benchmarks|scripts|examples)/[^`]*)`", table):
        assert (ROOT / named_path).exists(), (
            f"docs/architecture.md's module table names {named_path}, which does not exist"
        )


def test_the_session_is_in_parts_a_newcomer_can_hold_and_one_of_them_calls_the_model():
    """No session module over 400 lines, no class over 300; only ``session/forward.py`` calls the model
    (``self.model(``, ``.generate(``) in the package's inference code."""
    for path in (ROOT / "rsd_rerank" / "session").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert len(path.read_text().splitlines()) <= 400, path.name
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno < 300, f"{path.name}: class {node.name}"
    inference = [p for p in (ROOT / "rsd_rerank").rglob("*.py") if "training" not in p.parts]
    calling = {
        p.relative_to(ROOT).as_posix()
        for p in inference
        if re.search(r"\bmodel\(\s*(input_ids|\*\*|ids)|\bmodel\.generate\(", p.read_text())
    }
    assert calling == {"rsd_rerank/session/forward.py"}, calling


def test_the_cli_is_in_rooms_of_at_most_300_lines():
    """One module per sub-command under ``rsd_rerank/cli/``, each a newcomer can hold (issue #33)."""
    from rsd_rerank.cli import COMMANDS, build_parser

    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "rsd_rerank" / "cli").glob("*.py")}
    assert max(sizes.values()) <= 300, sizes
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert {c.__name__.rsplit(".", 1)[1].replace("_", "-") for c in COMMANDS} == names
