"""Multi-token identifiers: the token trie of one slot's identifier pieces and the tree-masked block that scores them.

With identifiers of several tokens (RankZephyr's ``[12]`` is ``1``, ``2``, ``]`` after `` [``), a
slot's distribution over the K items needs every item's whole piece:
``log p(item) = Σ_t log p(piece[t] | context, piece[:t])``. The pieces of a slot form a trie whose
root is the last separator token (already fed) and whose inner nodes (``1``, ``2``, ``1 0``, … for
K = 20: one per item there) are fed as extra "branch" tokens after the ranking's own tokens, each
seeing the context up to its slot's root and its own ancestors only. One forward thus gives every
row of a ranking: the teacher-forced tokens plus ``inner_nodes`` branch tokens per slot.

This module is pure tensor bookkeeping; ``TargetSession`` calls the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Block", "Read", "Trie", "additive_mask"]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, the dtype's minimum elsewhere (what eager and SDPA attention add)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass(frozen=True)
class Trie:
    """The inner (non-root, non-leaf) nodes of a slot's identifier pieces, and each item's path through them."""

    tokens: tuple[int, ...]
    """Token of each inner node (node n+1 in ``item_nodes``)."""
    depth: tuple[int, ...]
    """Depth of each inner node below the root (1: its first token)."""
    ancestors: torch.Tensor
    """[N, N] bool, on the CPU where the mask is built: node v is node u or one of its ancestors (the
    branch tokens' attention)."""
    item_nodes: torch.Tensor
    """[K, D] the node each of an item's tokens is predicted at (0: the root), padded with 0."""
    item_tokens: torch.Tensor
    """[K, D] the item's tokens, padded with 0."""
    item_valid: torch.Tensor
    """[K, D] bool, False at the padding."""

    @classmethod
    def of(cls, pieces: Sequence[Sequence[int]], device: torch.device) -> Trie:
        index: dict[tuple[int, ...], int] = {}  # inner node prefix -> 1-based node number
        for piece in pieces:
            for t in range(1, len(piece)):
                index.setdefault(tuple(piece[:t]), len(index) + 1)
        prefixes = sorted(index, key=index.get)
        n = len(prefixes)
        ancestors = torch.zeros(n, n, dtype=torch.bool)
        for u, prefix in enumerate(prefixes):
            for t in range(1, len(prefix) + 1):
                ancestors[u, index[prefix[:t]] - 1] = True
        width = max(len(p) for p in pieces)
        nodes = torch.zeros(len(pieces), width, dtype=torch.long)
        tokens = torch.zeros(len(pieces), width, dtype=torch.long)
        valid = torch.zeros(len(pieces), width, dtype=torch.bool)
        for i, piece in enumerate(pieces):
            for t, token in enumerate(piece):
                nodes[i, t] = index[tuple(piece[:t])] if t else 0
                tokens[i, t] = token
                valid[i, t] = True
        return cls(
            tokens=tuple(p[-1] for p in prefixes),
            depth=tuple(len(p) for p in prefixes),
            ancestors=ancestors,
            item_nodes=nodes.to(device),
            item_tokens=tokens.to(device),
            item_valid=valid.to(device),
        )

    @property
    def inner_nodes(self) -> int:
        return len(self.tokens)

    def item_log_probs(self, root: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """[K] log-distribution over the items from the logits [V] at the root and [N, V] at the inner nodes."""
        log_p = torch.log_softmax(torch.cat([root[None], inner]).float(), dim=-1)  # [1+N, V]
        per_token = log_p[self.item_nodes, self.item_tokens]  # [K, D]
        scores = torch.where(self.item_valid, per_token, torch.zeros_like(per_token)).sum(dim=1)
        return torch.log_softmax(scores, dim=-1)


@dataclass(frozen=True)
class Read:
    """One row to read: at ``root`` (index into the sequence's new tokens; -1: the last past token), through ``trie``."""

    root: int
    trie: Trie


@dataclass(frozen=True)
class Block:
    """The new tokens of B sequences after their pasts: each sequence's own tokens, then its reads' branch tokens.

    Pasts are left-padded to the longest; new tokens are right-padded. ``mask`` is the additive 4D
    attention mask over past + new, ``positions`` the position of every new token (a branch token:
    its root's + its depth).
    """

    input_ids: torch.Tensor  # [B, n]
    positions: torch.Tensor  # [B, n]
    allowed: torch.Tensor  # [B, n, Lmax + n] bool
    branch_start: list[list[int]]  # per sequence, per read: index of its first branch token in the new tokens
    past_width: int  # Lmax

    @classmethod
    def of(
        cls,
        paths: Sequence[Sequence[int]],
        reads: Sequence[Sequence[Read]],
        past_lengths: Sequence[int],
        pad_id: int,
        device: torch.device,
    ) -> Block:
        b = len(paths)
        lmax = max(past_lengths)
        sizes = [len(p) + sum(r.trie.inner_nodes for r in rs) for p, rs in zip(paths, reads, strict=True)]
        n = max(max(sizes), 1)
        ids = torch.full((b, n), pad_id, dtype=torch.long)
        positions = torch.zeros(b, n, dtype=torch.long)
        allowed = torch.zeros(b, n, lmax + n, dtype=torch.bool)
        starts: list[list[int]] = []
        for s, (path, rs, past) in enumerate(zip(paths, reads, past_lengths, strict=True)):
            m = len(path)
            ids[s, :m] = torch.tensor(path, dtype=torch.long)
            positions[s, :m] = past + torch.arange(m)
            allowed[s, : sizes[s], lmax - past : lmax] = True  # the real past, left-padded
            allowed[s, :m, lmax : lmax + m] = torch.tril(torch.ones(m, m, dtype=torch.bool))
            at, own = m, []
            for read in rs:
                trie = read.trie
                k = trie.inner_nodes
                own.append(at)
                if k:
                    ids[s, at : at + k] = torch.tensor(trie.tokens, dtype=torch.long)
                    positions[s, at : at + k] = past + read.root + torch.tensor(trie.depth)
                    allowed[s, at : at + k, lmax : lmax + read.root + 1] = True  # own tokens up to the root
                    allowed[s, at : at + k, lmax + at : lmax + at + k] = trie.ancestors
                at += k
            starts.append(own)
            # Padding rows see themselves only (no row may be all masked).
            pad_rows = torch.arange(sizes[s], n)
            allowed[s, pad_rows, lmax + pad_rows] = True
        return cls(ids.to(device), positions.to(device), allowed.to(device), starts, lmax)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, n, Lmax + n]: 0 where allowed, the dtype's minimum elsewhere (what eager and SDPA attention add)."""
        return additive_mask(self.allowed, dtype)[:, None]
