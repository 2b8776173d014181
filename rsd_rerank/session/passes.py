"""What a kind of pass gives the session, and what every kind shares.

Two kinds: ``SingleTokenPasses`` (every identifier one token: fixed-stride slots, one token read per
slot) and ``TriePasses`` (multi-token identifiers: each slot's row scored through a trie of the
items' pieces in a tree-masked forward). The session picks one from the prompts' layouts once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rsd_rerank.prompt import RankingLayout
from rsd_rerank.session.forward import KV, Forward
from rsd_rerank.session.kv import Held, PromptKV

__all__ = ["Passes"]


class Passes:
    """The base of a pass kind: the forward, the prompts' KV, the held rankings and the layouts.

    A kind implements ``row0`` (the first slot's rows after the prompts), ``verification_pass`` (one
    forward for many rankings of many queries) and ``stepwise`` (slot-by-slot decoding, the reference
    and the greedy target).
    """

    def __init__(self, forward: Forward, prompts: PromptKV, held: Held, layouts: Sequence[RankingLayout], pad_id: int):
        steps = {1 + len(layout.sep) for layout in layouts}
        seps = {layout.sep for layout in layouts}
        if len(steps) != 1 or len(seps) != 1:
            raise ValueError(
                "prompts batched in one session must share the ranking separator (same tokenizer and template)"
            )
        self.forward = forward
        self.prompts = prompts
        self.held = held
        self.layouts = list(layouts)
        self.device = forward.device
        self.ks = [layout.k for layout in layouts]
        self.k = torch.tensor(self.ks, device=self.device)
        self.step = steps.pop()  # tokens per slot after the prompt: identifier + separator (single tokens)
        self.sep_tokens = seps.pop()
        self.pad_id = pad_id

    def row0(self) -> torch.Tensor:
        """[Q, K_max] each query's first-slot row after its prompt (-inf past its K)."""
        raise NotImplementedError

    def verification_pass(
        self, rankings: dict[int, torch.Tensor], shared: dict[int, list[int]], needing: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, Callable[[int], KV]]]:
        """One forward for every ranking [B_q, K_q] of the ``needing`` queries, each fed after its
        ``shared`` prefix with the held ranking. Returns per query the rows [B_q, K_q, K_q] (rows up to
        the pass's first fed slot are the held ones) and a function from a ranking's index to its KV."""
        raise NotImplementedError

    def stepwise(
        self, queries: list[int], forced: torch.Tensor | None, row0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode slot by slot on a growing KV cache, all ``queries`` together, one forward per slot.

        With ``forced`` [A, K_max] the items are teacher-forced; without, each slot takes the greedy
        item among those not yet placed. A query leaves the batch once its K-1 slots are decoded.
        Returns the rankings [A, K_max] and their rows [A, K_max, K_max] (padded past each K).
        """
        raise NotImplementedError

    def whole_pass(self, q: int, rankings: torch.Tensor) -> torch.Tensor:
        """Batch-invariant verification of query ``q``'s rankings [B, K]: each ranking alone, fed whole after
        the query's own prompt KV in a forward of one fixed shape, so that every slot's row is a function
        of the items before it alone, bit for bit, whatever the rest of the ranking, the other queries or
        the earlier passes. Returns the rows [B, K, K] (slot 0's: ``row0_alone``); one pass in all."""
        raise NotImplementedError

    def row0_alone(self, q: int) -> torch.Tensor:
        """[K] query ``q``'s first-slot row computed from its prompt alone (no other query's shapes)."""
        raise NotImplementedError

    def start(self, queries: list[int], row0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``stepwise``: the items counted as placed [A, K_max] (padding), the rankings [A, K_max] and the
        rows [A, K_max, K_max] with slot 0's filled."""
        qs = torch.tensor(queries, device=self.device)
        k_max = max(self.ks[q] for q in queries)
        placed = torch.arange(k_max, device=self.device)[None, :] >= self.k[qs][:, None]  # padding: never chosen
        chosen = torch.zeros(len(queries), k_max, dtype=torch.long, device=self.device)
        rows = torch.full((len(queries), k_max, k_max), float("-inf"), device=self.device)
        rows[:, 0] = row0[qs, :k_max]
        return placed, chosen, rows

    def last_items(self, queries: list[int], forced: torch.Tensor | None, placed, chosen) -> None:
        """For ``stepwise``: the last slot takes the one item left (or the forced one)."""
        for i, q in enumerate(queries):
            k = self.ks[q]
            chosen[i, k - 1] = (~placed[i, :k]).float().argmax() if forced is None else forced[i, k - 1]
