"""Every decoding method, once: its name, how it runs, whether it takes a budget, the companion it
needs and a line of help.

The CLI's choices and help, ``methods.rank_many``'s dispatch, ``compare``, ``benchmarks/fidelity.py``,
``finetune`` and the README's methods table (checked by ``tests/test_architecture.py``) all read this
table; adding a method is adding a row here and, where it runs in a new way, a branch in ``methods``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BASELINES",
    "BUDGETED",
    "COMPARE_METHODS",
    "FINETUNES",
    "HEADS",
    "METHODS",
    "RANKER_OF",
    "REGISTRY",
    "TRAINED_BASELINES",
    "Method",
]


@dataclass(frozen=True)
class Method:
    """One decoding method."""

    name: str
    runs: str
    """How: ``target`` (the session's own greedy decoding), ``loop`` (the Eq. 1 loop with a proposer),
    ``heads`` (the loop over prediction heads' tree passes), ``drafts`` (the loop with several drafts a
    pass: the agent's, GSD's and PDM's), ``drafted`` (a drafter's first-slot order,
    verified under the budget where it takes one), ``free`` (unconstrained generation, ``compare`` only)."""
    budgeted: bool
    """Its result depends on T, the verification passes allowed after the prompt."""
    help: str
    companion: str | None = None
    """What it needs besides the target: ``agent`` (rsd), ``drafter`` (sdm: a model, optional), or the
    fine-tune ``rsd-rerank finetune --method NAME`` makes (heads or a LoRA ranker)."""
    baseline: bool = False
    """One of the paper's baselines (``benchmarks/fidelity.py --baselines``)."""


_TABLE = (
    Method("greedy", "target", False, "the exact target: constrained greedy decoding, K-1 steps"),
    Method("std", "loop", False, "single-token decoding (FIRST): the first-slot order, no pass"),
    Method("gsd", "loop", True, "up-to-down decoding, the tail ordered by the rejected slot's row"),
    Method("consensus", "loop", True, "as gsd, the tail ordered by the mean of every row seen (no learning)"),
    Method("rsd", "loop", True, "as gsd, the tail ordered by the learned agent", companion="agent"),
    Method("rsd-drafts", "drafts", True, "rsd, gsd and pdm tails verified together a pass; the longest kept", companion="agent"),
    Method("sdm", "drafted", True, "a drafter's order verified (Leviathan et al.)", "drafter", baseline=True),
    Method("pdm", "loop", True, "Jacobi decoding: every slot from its own row given the pass's prefix", baseline=True),
    Method("blockwise", "heads", True, "Blockwise parallel decoding: K-1 heads, top-5 chains", "blockwise", True),
    Method("medusa", "heads", True, "Medusa-1: 3 heads, a [1, 3, 3, 3] tree a pass", "medusa", True),
    Method("first-ft", "drafted", False, "STD on the target fine-tuned with FIRST's loss", "first-ft", True),
    Method("rankzephyr-ft", "drafted", False, "STD on the target fine-tuned with RankZephyr's SFT", "rankzephyr-ft", True),
    Method("first-sd", "drafted", True, "sdm with the first-ft fine-tune drafting", "first-ft", True),
)  # fmt: skip

REGISTRY: dict[str, Method] = {m.name: m for m in _TABLE}
METHODS = tuple(REGISTRY)
"""What ``--method`` takes."""
BUDGETED = tuple(m.name for m in _TABLE if m.budgeted)
"""The methods whose result depends on the budget T."""
HEADS = tuple(m.name for m in _TABLE if m.runs == "heads")
"""Methods that draft with prediction heads on the target's last hidden state."""
RANKER_OF = {m.name: m.companion for m in _TABLE if m.runs == "drafted" and m.companion not in (None, "drafter")}
"""Methods that use a fine-tuned ranker, and which fine-tune (``first-sd`` drafts with FIRST's)."""
TRAINED_BASELINES = (*HEADS, *RANKER_OF)
"""The methods that need heads or a fine-tuned ranker made by ``rsd-rerank finetune``."""
FINETUNES = tuple(dict.fromkeys(REGISTRY[m].companion for m in TRAINED_BASELINES))
"""The companions ``rsd-rerank finetune`` makes for them."""
BASELINES = tuple(m.name for m in _TABLE if m.baseline)
"""The paper's baselines."""
COMPARE_METHODS = {
    "generate": Method("generate", "free", False, "free generation (RankZephyr-style), parsed by RankLLM"),
    "first": Method("first", "loop", False, "FIRST-style: items by their first-identifier logit (= std)"),
    **REGISTRY,
}
"""What ``compare --methods`` takes: every method, free generation and FIRST's name for STD."""
