"""Mutation check: each deliberate bug in the engine must make the tests that guard it fail.

Each mutant edits one line of a temporary copy of the package (the edit must find its line exactly
once, so a mutant that no longer applies is an error, not a silent pass) and runs the tests named
for it there; the run must end with failing tests (pytest exit 1), not pass and not crash.

    .venv/bin/python scripts/mutants.py            # all mutants
    .venv/bin/python scripts/mutants.py prefix-reuse-off
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    before: str
    after: str
    tests: tuple[str, ...]
    """pytest node ids (relative to the repository) that must fail."""


MUTANTS = (
    Mutant(
        "checkpoint-by-pooled-mean",
        "rsd_rerank/training/trainer.py",
        '    return min(float(np.mean([m["KT"] for m in metrics.values()])) for metrics in per_target.values())\n',
        '    return float(np.mean([np.mean([m["KT"] for m in metrics.values()]) for metrics in per_target.values()]))\n',
        ("tests/test_training.py::test_the_checkpoint_score_is_the_worst_targets_not_the_pooled_mean",),
    ),
    Mutant(
        "tokens-fed-counts-one-draft",
        "rsd_rerank/session/target_session.py",
        "        return sum(w * n for w, n in zip(widths, sequences, strict=True))\n",
        "        return sum(widths)\n",
        ("tests/test_drafts.py::test_a_pass_of_several_drafts_counts_every_drafts_tokens",),
    ),
    Mutant(
        "prefix-reuse-off",
        "rsd_rerank/session/verification.py",
        "def shared_prefix(ranking: Sequence[int], held: Sequence[int]) -> int:\n",
        "def shared_prefix(ranking: Sequence[int], held: Sequence[int]) -> int:\n    return 0\n",
        (
            "tests/test_session.py::test_a_pass_feeds_only_the_tail_after_the_verified_prefix",
            "tests/test_decoding.py::test_a_later_round_feeds_only_the_tail_after_its_verified_prefix",
        ),
    ),
    Mutant(
        "bonus-dropped",
        "rsd_rerank/decoding.py",
        "    fixed = (slot_of < i_star[:, None]) | is_bonus\n",
        "    fixed = slot_of < i_star[:, None]\n",
        (
            "tests/test_decoding.py::test_next_ranking_equals_the_row_by_row_reference_on_random_inputs",
            "tests/test_decoding.py::test_theorem_1_for_random_lists_and_every_proposer",
        ),
    ),
    Mutant(
        "proposer-ignored",
        "rsd_rerank/decoding.py",
        '    order = torch.argsort(-scores.masked_fill(fixed, float("inf")), dim=1, stable=True)\n',
        '    order = torch.argsort(-torch.zeros_like(scores).masked_fill(fixed, float("inf")), dim=1, stable=True)\n',
        ("tests/test_decoding.py::test_next_ranking_equals_the_row_by_row_reference_on_random_inputs",),
    ),
    Mutant(
        "i-star-off-by-one",
        "rsd_rerank/session/verification.py",
        "    return (rankings == greedy).long().cumprod(dim=1).sum(dim=1)\n",
        "    return ((rankings == greedy).long().cumprod(dim=1).sum(dim=1) + 1).clamp(max=rankings.shape[1])\n",
        (
            "tests/test_session.py::test_accepted_is_the_longest_greedy_prefix",
            "tests/test_decoding.py::test_theorem_1_for_random_lists_and_every_proposer",
        ),
    ),
    Mutant(
        "tree-ancestors-hidden",
        "rsd_rerank/session/heads.py",
        "        for depth in range(1, len(path)):\n",
        "        for depth in range(1, 1):\n",
        ("tests/test_baselines.py::test_a_tree_pass_reads_the_rows_verify_reads",),
    ),
)


MIXED_PASS = "tests/test_session.py::test_after_a_mixed_pass_the_best_rankings_kv_is_kept"
HELD_ROWS = "tests/test_session.py::test_rows_of_a_verified_prefix_are_the_held_ones_so_i_star_grows_in_any_precision"
MUTANTS += (
    Mutant(
        "kv-of-row-0",
        "rsd_rerank/session/forward.py",
        "    i = offset + row\n",
        "    i = offset\n",
        (MIXED_PASS,),
    ),
    Mutant(
        "held-rows-recomputed",
        "rsd_rerank/session/verification.py",
        "    return torch.where(own[:, :, None], held.expand(b, -1, -1), fresh)\n",
        "    return fresh\n",
        (HELD_ROWS,),
    ),
)

BATCH_TEST = "tests/test_batching.py::test_a_batch_gives_each_query_what_its_own_session_gives"
MUTANTS += (
    Mutant(
        "positions-count-padding",
        "rsd_rerank/session/single.py",
        "            self.prompts.length_tensor[queries][:, None]\n",
        "            self.prompts.width\n",
        (BATCH_TEST,),
    ),
    Mutant(
        "leaves-batch-early",
        "rsd_rerank/session/single.py",
        "            still = [i for i in active_list if ks[i] - 1 > slot]\n",
        "            still = [i for i in active_list if ks[i] - 1 > slot + 1]\n",
        (BATCH_TEST, "tests/test_batching.py::test_theorem_1_inside_a_batch_and_early_leavers"),
    ),
)


MUTANTS += (
    Mutant(
        "jacobi-slot-off-by-one",
        "rsd_rerank/proposers.py",
        '        item = latest[:, slot].masked_fill(placed, float("-inf")).argmax(dim=-1)  # [B]\n',
        '        item = latest[:, min(slot + 1, k - 1)].masked_fill(placed, float("-inf")).argmax(dim=-1)\n',
        ("tests/test_decoding.py::test_jacobi_slots_place_each_item_from_its_own_row_in_place",),
    ),
)

INVARIANT_ROWS = "tests/test_precision.py::test_a_slots_row_does_not_depend_on_what_follows_it_or_on_the_batch"
MUTANTS += (
    Mutant(
        "invariant-passes-ignored",
        "rsd_rerank/session/target_session.py",
        "        if self.invariant:\n            return verify_whole(self._passes, self._held, rs)\n",
        "        if False:\n            return verify_whole(self._passes, self._held, rs)\n",
        (INVARIANT_ROWS,),
    ),
)

DRAFTS = "tests/test_drafts.py::test_a_multi_draft_round_verifies_no_less_than_any_of_its_drafts_alone"
MUTANTS += (
    Mutant(
        "drafts-keep-the-first-branch",
        "rsd_rerank/decoding.py",
        "best = int(torch.argmax(v.accepted))  # the first of the longest",
        "best = 0  # the first of the longest",
        (DRAFTS,),
    ),
    Mutant(
        "drafts-lead-ignores-the-rows",
        "rsd_rerank/decoding.py",
        "            lead = 0 if agreement / compared >= POOLING_AGREEMENT else 1\n",
        "            lead = 0\n",
        ("tests/test_drafts.py::test_the_rows_decide_which_drafter_orders_the_unverified_tail",),
    ),
)

SLIDING = "tests/test_sliding_window.py::test_a_windowed_model_reranks_as_its_greedy_generate"
MUTANTS += (
    Mutant(
        "cache-drops-window-positions",
        "rsd_rerank/session/forward.py",
        "return DynamicCache() if kv is None else DynamicCache(ddp_cache_data=kv)",
        "return DynamicCache(config=self.model.config) if kv is None else DynamicCache(ddp_cache_data=kv, config=self.model.config)",
        (SLIDING,),
    ),
)

PADDED_ROWS = "tests/test_reranker.py::test_a_padded_batch_gives_each_example_its_own_logits"
MUTANTS += (
    Mutant(
        "padded-batch-reads-the-padding",
        "rsd_rerank/training/lora.py",
        "picked = [hidden[b, len(p) - 1 : len(p) + len(r)] for b, (p, r) in enumerate(rows)]",
        "picked = [hidden[b, -len(r) - 1 :] for b, (p, r) in enumerate(rows)]",
        (PADDED_ROWS,),
    ),
)

BRUTE_FORCE = "tests/test_numeric.py::test_verification_rows_equal_the_brute_force_item_probabilities"
MUTANTS += (
    Mutant(
        "branches-see-siblings",
        "rsd_rerank/tree.py",
        "                    allowed[s, at : at + k, lmax + at : lmax + at + k] = trie.ancestors\n",
        "                    allowed[s, at : at + k, lmax + at : lmax + at + k] = True\n",
        (BRUTE_FORCE,),
    ),
    Mutant(
        "branch-positions-off-by-one",
        "rsd_rerank/tree.py",
        "                    positions[s, at : at + k] = past + read.root + torch.tensor(trie.depth)\n",
        "                    positions[s, at : at + k] = past + read.root + 1 + torch.tensor(trie.depth)\n",
        (BRUTE_FORCE, "tests/test_numeric.py::test_every_method_reproduces_the_greedy_ranking_at_t_ge_k"),
    ),
    Mutant(
        "history-kept-by-default",
        "rsd_rerank/integrations/rank_llm.py",
        '        populate = kwargs.get("populate_invocations_history", False)\n',
        '        populate = kwargs.get("populate_invocations_history", True)\n',
        ("tests/test_rank_llm_parity.py::test_history_is_off_by_default_and_scores_outside_the_range_are_rankllms",),
    ),
)


def _copy_tree(dest: Path) -> None:
    """The package (with integrations/ where it is imported from) and the tests, as they are now."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "rsd_rerank", dest / "rsd_rerank", ignore=ignore)
    shutil.copytree(ROOT / "integrations", dest / "rsd_rerank" / "integrations", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "examples", dest / "examples", ignore=ignore)


def run_mutant(mutant: Mutant) -> tuple[int, str]:
    """Apply ``mutant`` to a fresh copy and run its tests there; returns pytest's exit code and summary."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        dest = Path(tmp)
        _copy_tree(dest)
        path = dest / mutant.file
        source = path.read_text()
        if source.count(mutant.before) != 1:
            raise SystemExit(f"mutant {mutant.name}: its line is not in {mutant.file} exactly once; update the mutant")
        path.write_text(source.replace(mutant.before, mutant.after))
        env = {"PYTHONPATH": str(dest), "PATH": "/usr/bin:/bin"}
        where = subprocess.run(
            [sys.executable, "-c", "import rsd_rerank.session as s; print(s.__file__)"],
            cwd=dest,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert where.startswith(str(dest)), f"the mutant copy is not the one imported: {where}"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", *mutant.tests],
            cwd=dest,
            env=env,
            capture_output=True,
            text=True,
        )
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
        return done.returncode, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    survived = []
    for mutant in chosen:
        code, summary = run_mutant(mutant)
        caught = code == 1  # 1: tests failed; 0 would be a surviving mutant, other codes a broken run
        print(f"{mutant.name:20s} {'caught' if caught else 'SURVIVED'}  ({summary})", flush=True)
        if not caught:
            survived.append(mutant.name)
    if survived:
        print(f"mutants not caught: {', '.join(survived)}")
        return 1
    print(f"all {len(chosen)} mutants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
