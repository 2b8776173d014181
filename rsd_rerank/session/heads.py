"""A tree-masked pass for the head-drafting baselines (Medusa, Blockwise): a prefix and a tree of
continuations after it, every node's row read in one forward (single-token identifiers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsd_rerank.session.single import SingleTokenPasses
from rsd_rerank.session.verification import greedy_item, shared_prefix
from rsd_rerank.tree import additive_mask

__all__ = ["Expansion", "expand"]


@dataclass(frozen=True)
class Expansion:
    """One tree-masked pass of one query: a prefix and a tree of continuations after it (``TargetSession.expand``)."""

    prefix_row: torch.Tensor
    """[K] log-distribution of the slot right after the prefix."""
    prefix_hidden: torch.Tensor
    """[H] the last hidden state where ``prefix_row`` is read."""
    rows: torch.Tensor
    """[N, K] log-distribution of the slot after each node (the prefix, then the node's path)."""
    hidden: torch.Tensor
    """[N, H] the last hidden state there."""
    accepted: tuple[int, ...]
    """The deepest path of the tree whose every item is the greedy choice (among unplaced items) of
    the row before it; () where the tree's first item is already not."""
    node: int
    """The index of that path among the nodes, -1 for ()."""


def _tree_mask(
    passes: SingleTokenPasses, query: int, shared: int, n_chain: int, paths: list[tuple[int, ...]], n: int
) -> tuple[torch.Tensor, dict[tuple[int, ...], int]]:
    """[n, past + n] which fed token sees which: the prompt (its real tokens), the shared slots, the chain
    causally, and each node its chain, its ancestors and itself causally; and each node's first token."""
    step = passes.step
    past_len = passes.prompts.width + shared * step
    allowed = torch.zeros(n, past_len + n, dtype=torch.bool)
    allowed[:, : passes.prompts.width] = passes.prompts.mask[query].bool().cpu()
    allowed[:, passes.prompts.width : past_len] = True
    allowed[:n_chain, past_len : past_len + n_chain] = torch.tril(torch.ones(n_chain, n_chain, dtype=torch.bool))
    start = {p: n_chain + i * step for i, p in enumerate(paths)}
    for path in paths:
        at = start[path]
        allowed[at : at + step, past_len : past_len + n_chain] = True
        for depth in range(1, len(path)):
            ancestor = start[path[:depth]]
            allowed[at : at + step, past_len + ancestor : past_len + ancestor + step] = True
        allowed[at : at + step, past_len + at : past_len + at + step] = torch.tril(
            torch.ones(step, step, dtype=torch.bool)
        )
    return allowed, start


def expand(passes: SingleTokenPasses, prefix: Sequence[int], paths: Sequence[Sequence[int]], query: int) -> Expansion:
    """Teacher-force ``prefix`` and a tree of continuations after it in one tree-masked forward (a pass).

    ``paths`` are the tree's nodes, each the items after the prefix (a node's parent, its path
    without the last item, is the prefix or another node). Each node feeds one slot's tokens that
    see the prompt, the prefix and their ancestors' tokens only, at the positions of a linear
    ranking, so its row is what ``verify`` reads after prefix + path. The prefix is fed after the
    part of it the query's held ranking shares (its last item always). Afterwards the query holds
    prefix + the accepted path, so a next pass from there feeds only what is new.
    """
    k, prefix, paths = passes.ks[query], list(prefix), [tuple(p) for p in paths]
    if not prefix or len(prefix) + max((len(p) for p in paths), default=0) > k - 1:
        raise ValueError(f"a prefix of 1..{k - 1} items and paths that end by slot {k - 2}")
    known = set(paths)
    for path in paths:
        assert path and (len(path) == 1 or path[:-1] in known), f"node {path} has no parent in the tree"
        assert len(set(prefix + list(path))) == len(prefix) + len(path), "an item placed twice"
    held = passes.held
    shared = min(shared_prefix(prefix, held.items[query]), len(prefix) - 1)
    step, q, device = passes.step, torch.tensor([query], device=passes.device), passes.device
    chain = torch.tensor([prefix[shared:]], device=device)
    tokens = [passes.slot_tokens(chain, q, first_slot=shared)[0]]
    n_chain = tokens[0].shape[0]
    slots = [len(prefix) + len(p) - 1 for p in paths]
    for path, slot in zip(paths, slots, strict=True):
        tokens.append(passes.slot_tokens(torch.tensor([[path[-1]]], device=device), q, first_slot=slot)[0])
    ids = torch.cat(tokens)[None]
    n = ids.shape[1]
    past_len = passes.prompts.width + shared * step
    allowed, start = _tree_mask(passes, query, shared, n_chain, paths, n)
    positions = list(range(shared * step, shared * step + n_chain))
    for slot in slots:
        positions += range(slot * step, slot * step + step)
    mask = additive_mask(allowed, passes.forward.model.dtype)[None, None].to(device)
    position_ids = passes.prompts.length_tensor[query] + torch.tensor([positions], device=device)
    keep = torch.tensor([*range(step - 1, n_chain, step), *(start[p] + step - 1 for p in paths)], device=device)
    logits, cache, hidden = passes.forward(ids, passes.past(q, shared), mask, position_ids, keep, queries=[query])
    rows = passes.rows(logits, q)[0, :, :k]  # chain slots' rows, then each node's
    hidden = hidden[0]
    n_fed = len(prefix) - shared
    prefix_row, prefix_hidden = rows[n_fed - 1], hidden[n_fed - 1]
    node_rows, node_hidden = rows[n_fed:], hidden[n_fed:]
    index = {p: i for i, p in enumerate(paths)}

    accepted: tuple[int, ...] = ()
    while True:
        row = prefix_row if not accepted else node_rows[index[accepted]]
        child = accepted + (greedy_item(row, prefix + list(accepted)),)
        if child not in index:
            break
        accepted = child
    # Held from now on: prompt + the shared slots + the fed chain, then the accepted nodes' tokens.
    kv = passes.forward.kv_of(cache, past_len + n)
    columns = torch.cat(
        [torch.arange(past_len + n_chain)]
        + [
            torch.arange(past_len + start[accepted[:d]], past_len + start[accepted[:d]] + step)
            for d in range(1, len(accepted) + 1)
        ]
    ).to(device)
    held.items[query] = tuple(prefix + list(accepted))
    held.kv[query] = [(k_.index_select(2, columns), v_.index_select(2, columns)) for k_, v_ in kv]
    held.rows[query] = torch.cat(
        [
            held.rows[query][: shared + 1],
            rows[:n_fed],
            node_rows[[index[accepted[:d]] for d in range(1, len(accepted) + 1)]],
        ]
    )
    return Expansion(
        prefix_row=prefix_row,
        prefix_hidden=prefix_hidden,
        rows=node_rows,
        hidden=node_hidden,
        accepted=accepted,
        node=index[accepted] if accepted else -1,
    )
