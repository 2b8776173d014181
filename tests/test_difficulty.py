"""``rsd-rerank difficulty``: every fast method at every budget on the user's own model, the target's
figures, one recommendation, and a run that resumes from its per-request records."""

import json

import pytest
import torch

from rsd_rerank.cli import main


def _summary(kts: dict[str, list[float]], tokens: dict[str, float], paper_like: bool) -> dict:
    """A summary as ``summarise`` writes it, with the given mean KT per method at T = 1, 3, 5."""
    rows = [
        {"method": m, "T": t, "KT": [kt, kt, kt], "passes": t, "tokens_per_pass": tokens[m], "decode_seconds": 0.1 * t}
        for t_index, t in enumerate((1, 3, 5))
        for m, kts_of in kts.items()
        for kt in [kts_of[t_index]]
    ]
    checks = {"GSD@5": {"value": 0.5, "bound": "<= 0.85", "met": paper_like}}
    seconds = {"prefill": 0.2, "greedy": 1.0, "std": 0.0}
    return {"rows": rows, "budgets": [1, 3, 5], "paper_like": checks, "seconds": seconds}


def test_the_recommendation_takes_the_best_method_at_the_smallest_budget_that_is_good_enough():
    from rsd_rerank.integrations.difficulty import recommend

    tokens = {"gsd": 60, "consensus": 60, "pdm": 60, "rsd": 60, "rsd-drafts": 180}
    # rsd-drafts ties gsd within 0.005 at T = 5: the cheaper per pass wins; gsd reaches 0.95 at T = 3.
    kts = {"gsd": [0.5, 0.96, 0.990], "consensus": [0.5, 0.8, 0.9], "pdm": [0.6, 0.7, 0.7],
           "rsd": [0.5, 0.8, 0.85], "rsd-drafts": [0.5, 0.97, 0.994]}  # fmt: skip
    rec = recommend(_summary(kts, tokens, paper_like=False))
    assert (rec["method"], rec["budget"]) == ("gsd", 3) and rec["train"].startswith("no:")
    # A clear winner that never reaches 0.95 is recommended at the largest budget; a paper-like target
    # with room left is worth an agent.
    kts["rsd"] = [0.6, 0.85, 0.93]
    rec = recommend(_summary({**kts, "gsd": [0.4, 0.6, 0.7], "rsd-drafts": [0.4, 0.6, 0.7]}, tokens, paper_like=True))
    assert (rec["method"], rec["budget"]) == ("rsd", 5) and rec["train"].startswith("yes:")
    assert rec["kt"] == {1: 0.6, 3: 0.85, 5: 0.93} and rec["train_minutes_per_100_requests"] > 0
    rec = recommend(_summary({**kts, "gsd": [0.4, 0.6, 0.7], "rsd-drafts": [0.4, 0.6, 0.7]}, tokens, paper_like=False))
    assert rec["train"].startswith("perhaps:") and "GSD@5" in rec["train"]


def test_difficulty_reports_every_method_and_resumes(tiny_llama, train_requests, tmp_path, monkeypatch, capsys):
    import rsd_rerank.cli.difficulty as room
    import rsd_rerank.integrations.difficulty as report

    monkeypatch.setattr(room, "target_from", lambda args: tiny_llama)
    out = tmp_path / "d"
    args = ["difficulty", "--requests", str(train_requests), "--queries", "2", "--max-passage-words", "20"]
    assert main([*args, "--budgets", "1,11", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "d.json").read_text())
    rows = {(r["method"], r["T"]): r for r in summary["rows"]}
    assert set(rows) == {(m, t) for m in report.REPORT_METHODS for t in (1, 11)}
    # K = 12: at T = K - 1 every method is the target's greedy ranking (Theorem 1), so the cheapest is
    # recommended and no agent is worth training.
    assert all(rows[m, 11]["KT"][0] == 1.0 for m in report.REPORT_METHODS)
    assert summary["recommendation"]["method"] == "gsd" and summary["recommendation"]["train"].startswith("no:")
    assert summary["agent"] == "universal"  # no bundled agent was trained on this target
    assert all(rows[m, 1]["passes"] == 1.0 and rows[m, 1]["tokens_per_pass"] > 0 for m in report.REPORT_METHODS)
    assert "Use `--method gsd" in printed and (tmp_path / "d.md").read_text() in printed
    assert len((tmp_path / "d.claims.jsonl").read_text().splitlines()) == 2
    # --agent goes to the methods that take one; gsd, consensus and pdm run without it
    assert main([*args, "--queries", "1", "--budgets", "1", "--agent", "universal", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["agent"] == "universal"

    def refuse(*args, **kwargs):
        raise AssertionError("a request already on record was computed again")

    monkeypatch.setattr(report, "claim_difficulty", refuse)
    assert main([*args, "--budgets", "1,11", "--out", str(out)]) == 0  # every request read back
    assert json.loads((tmp_path / "d.json").read_text()) == summary
    with pytest.raises(AssertionError, match="computed again"):  # other settings are other records
        main([*args, "--budgets", "1,5", "--out", str(out)])
    # Records are keyed by the agent's weights, not its name: a retrained `universal` recomputes.
    from rsd_rerank.agent.store import resolve_agent

    retrained = resolve_agent(None, tiny_llama, 12)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.5)
    monkeypatch.setattr(report, "resolve_agent", lambda *a, **k: retrained)
    with pytest.raises(AssertionError, match="computed again"):
        main([*args, "--budgets", "1,11", "--out", str(out)])


def test_a_lora_folder_over_another_base_is_refused(tmp_path):
    from rsd_rerank.targets import load_target

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.2-3B"}))
    with pytest.raises(ValueError, match="a LoRA adapter over 'meta-llama/Llama-3.2-3B'"):
        load_target(str(tmp_path))


def test_the_fidelity_benchmark_resumes_by_weights_not_names(tiny_llama, train_requests, tmp_path, monkeypatch):
    """``benchmarks/fidelity.py`` reads back a claim it has on record, and measures again when an agent under
    the same name has other weights (a stale record would report the old agent's fidelity as the new one's)."""
    import importlib.util
    from pathlib import Path

    import rsd_rerank.agent.store as store

    path = Path(__file__).parents[1] / "benchmarks" / "fidelity.py"
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", path)
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    out = tmp_path / "f"
    args = ["--requests", str(train_requests), "--queries", "2", "--budgets", "1,5", "--max-passage-words", "20",
            "--agent", "rsd=universal", "--baselines", "pdm,rsd-drafts", "--out", str(out)]  # fmt: skip
    assert fidelity.main(args, target=tiny_llama) == 0
    first = json.loads((tmp_path / "f.json").read_text())
    assert {(r["method"], r["T"]) for r in first["rows"]} >= {("rsd", 5), ("rsd-drafts", 5), ("pdm", 1)}
    runs = []
    real_run = fidelity.decoding_run
    monkeypatch.setattr(fidelity, "decoding_run", lambda *a: runs.append(a) or real_run(*a))
    assert fidelity.main(args, target=tiny_llama) == 0  # every claim read back
    assert runs == [] and json.loads((tmp_path / "f.json").read_text()) == first
    real_resolve = store.resolve_agent

    def retrained(*a, **k):
        agent = real_resolve(*a, **k)
        with torch.no_grad():
            next(agent.parameters()).add_(0.5)
        return agent

    monkeypatch.setattr(fidelity, "resolve_agent", retrained)
    assert fidelity.main(args, target=tiny_llama) == 0
    assert len(runs) == 2 * 3 * 3  # 2 claims x (gsd, consensus, rsd) x T in (0, 1, 5)
    assert len((tmp_path / "f.claims.jsonl").read_text().splitlines()) == 4
