"""Passes for multi-token identifiers (``[12]`` is ``[``, ``1``, ``2``, ``]`` in SmolLM2's tokenizer).

A slot's row is every item's whole piece scored at once: the branch tokens of a trie of the pieces
are fed after the slot's last separator under a tree mask (``rsd_rerank.tree``). Chunks (piece +
separator) differ in length between items, so KV is kept per query without padding ([1, H, L, D]:
prompt + ranking tokens), and a pass left-pads the pasts and masks everything explicitly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from rsd_rerank.session.forward import KV
from rsd_rerank.session.passes import Passes
from rsd_rerank.tree import Block, Read, Trie

__all__ = ["TriePasses"]


class TriePasses(Passes):
    """Verification passes and stepwise decoding where identifiers may be several tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tries = [
            (Trie.of(lo.first_pieces, self.device), Trie.of(lo.later_pieces, self.device)) for lo in self.layouts
        ]

    def chunk(self, q: int, slot: int, item: int) -> list[int]:
        """Tokens of ``item`` at ``slot`` of query ``q``'s ranking, with the separator after it."""
        return list(self.layouts[q].piece(slot, item)) + list(self.sep_tokens)

    def offset(self, q: int, items: Sequence[int], slots: int) -> int:
        """Tokens after the prompt taken by the first ``slots`` chunks of ``items``."""
        return sum(len(self.chunk(q, j, items[j])) for j in range(slots))

    def tree_pass(
        self,
        pasts: list[KV],
        paths: list[list[int]],
        reads: list[list[Read]],
        queries: list[int] | None,
        root_logits: Sequence[torch.Tensor] | None = None,
        same_pass: bool = False,
    ) -> tuple[list[list[torch.Tensor]], Callable[[int], KV]]:
        """One forward of B sequences, each its past KV, its own tokens ``paths[b]`` and its reads' branch tokens.

        Returns each sequence's rows (one [K_q] log-distribution per read) and a function from a
        sequence to the KV of its past and its own tokens (a copy). ``root_logits[b]``: the logits of
        the last past token, for reads at root -1 (``queries`` None: the prompts' own, not counted).
        """
        lengths = [past[0][0].shape[2] for past in pasts]
        block = Block.of(paths, reads, lengths, self.pad_id, self.device)
        lmax = block.past_width
        layers = []
        for layer in range(len(pasts[0])):
            k_, v_ = pasts[0][layer]
            if len(set(lengths)) == 1:
                layers.append((torch.cat([p[layer][0] for p in pasts]), torch.cat([p[layer][1] for p in pasts])))
                continue
            shape = (len(pasts), k_.shape[1], lmax, k_.shape[3])
            keys, values = k_.new_zeros(shape), v_.new_zeros(shape)
            for b, (past, n) in enumerate(zip(pasts, lengths, strict=True)):
                keys[b, :, lmax - n :] = past[layer][0][0]
                values[b, :, lmax - n :] = past[layer][1][0]
            layers.append((keys, values))
        mask = block.additive_mask(self.forward.model.dtype)
        logits, cache, _ = self.forward(
            block.input_ids, layers, mask, block.positions, keep=0, queries=queries, same_pass=same_pass
        )
        kv = self.forward.kv_of(cache, lmax + block.input_ids.shape[1])
        rows = []
        for b, (own_reads, starts) in enumerate(zip(reads, block.branch_start, strict=True)):
            rows.append(
                [
                    read.trie.item_log_probs(
                        root_logits[b] if read.root < 0 else logits[b, read.root],
                        logits[b, start : start + read.trie.inner_nodes],
                    )
                    for read, start in zip(own_reads, starts, strict=True)
                ]
            )

        def kept(b: int) -> KV:
            end = lmax + len(paths[b])
            return [
                (
                    torch.cat([p_k, k_[b : b + 1, :, lmax:end]], dim=2),
                    torch.cat([p_v, v_[b : b + 1, :, lmax:end]], dim=2),
                )
                for (p_k, p_v), (k_, v_) in zip(pasts[b], kv, strict=True)
            ]

        return rows, kept

    def row0(self) -> torch.Tensor:
        # Every item's whole piece scored after each prompt: one forward, not counted (part of the prefill).
        queries = range(len(self.ks))
        reads = [[Read(-1, self.tries[q][0])] for q in queries]
        pasts = [self.prompts.unpadded(q) for q in queries]
        rows, _ = self.tree_pass(pasts, [[] for _ in queries], reads, None, self.prompts.last_logits)
        out = torch.full((len(self.ks), max(self.ks)), float("-inf"), device=self.device)
        for q in queries:
            out[q, : self.ks[q]] = rows[q][0]
        return out

    @functools.cache  # noqa: B019 (a pure function of the prompt, kept as long as the session's passes)
    def row0_alone(self, q: int) -> torch.Tensor:
        past = [(k_.contiguous(), v_.contiguous()) for k_, v_ in self.prompts.unpadded(q)]
        rows, _ = self.tree_pass([past], [[]], [[Read(-1, self.tries[q][0])]], None, [self.prompts.last_logits[q]])
        return rows[0][0]

    def whole_pass(self, q: int, rankings: torch.Tensor) -> torch.Tensor:
        k, layout = self.ks[q], self.layouts[q]
        past = [(k_.contiguous(), v_.contiguous()) for k_, v_ in self.prompts.unpadded(q)]
        # Every ranking is fed to one length: all K chunks (the last item's too), padded at the end where
        # slot 0's pieces differ in length from the later ones (nothing reads the padding).
        extra = max(len(f) - len(lp) for f, lp in zip(layout.first_pieces, layout.later_pieces, strict=True))
        width = extra + sum(len(lp) for lp in layout.later_pieces) + k * len(self.sep_tokens)
        row0 = self.row0_alone(q)
        out = []
        for b, ranking in enumerate(rankings.tolist()):
            path: list[int] = []
            reads: list[Read] = []
            for slot in range(k):
                path += self.chunk(q, slot, ranking[slot])
                if slot < k - 1:
                    reads.append(Read(len(path) - 1, self.tries[q][1]))
            path += [self.pad_id] * (width - len(path))
            rows, _ = self.tree_pass([past], [path], [reads], [q], same_pass=b > 0)
            out.append(torch.cat([row0[None], torch.stack(rows[0])]))
        return torch.stack(out)

    def verification_pass(
        self, rankings: dict[int, torch.Tensor], shared: dict[int, list[int]], needing: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, Callable[[int], KV]]]:
        # Each query is fed from its own smallest shared prefix (no common stride to align).
        pasts, paths, reads = [], [], []
        for q in needing:
            k, start = self.ks[q], min(shared[q])
            length = self.prompts.lengths[q] + self.offset(q, self.held.items[q], start)
            base = self.held.kv[q] or self.prompts.unpadded(q)
            past = [(k_[:, :, :length], v_[:, :, :length]) for k_, v_ in base]
            for ranking in rankings[q].tolist():
                path: list[int] = []
                own: list[Read] = []
                for slot in range(start, k - 1):
                    path += self.chunk(q, slot, ranking[slot])
                    own.append(Read(len(path) - 1, self.tries[q][1]))
                pasts.append(past)
                paths.append(path)
                reads.append(own)
        rows, kept = self.tree_pass(pasts, paths, reads, needing)
        new_rows, new_kv, at = {}, {}, 0
        for q in needing:
            b, start = rankings[q].shape[0], min(shared[q])
            held = self.held.rows[q][: start + 1]  # rows of slots 0..start: unchanged by the pass
            fresh = torch.stack([torch.stack(rows[at + i]) for i in range(b)])  # [B, K-1-start, K]
            new_rows[q] = torch.cat([held.expand(b, -1, -1), fresh], dim=1)
            new_kv[q] = lambda best, offset=at: kept(offset + best)
            at += b
        return new_rows, new_kv

    def stepwise(
        self, queries: list[int], forced: torch.Tensor | None, row0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Each step feeds the chosen chunk and the next slot's branches.
        ks = [self.ks[q] for q in queries]
        placed, chosen, rows = self.start(queries, row0)
        pasts = [self.prompts.unpadded(q) for q in queries]
        for slot in range(max(ks) - 1):
            active = [i for i, k in enumerate(ks) if k - 1 > slot]
            at = torch.tensor(active, device=self.device)
            if forced is None:
                items = rows[at, slot].masked_fill(placed[at], float("-inf")).argmax(dim=-1)
            else:
                items = forced[at, slot]
            chosen[at, slot] = items
            placed[at, items] = True
            paths = [self.chunk(queries[i], slot, item) for i, item in zip(active, items.tolist(), strict=True)]
            reads = [[Read(len(path) - 1, self.tries[queries[i]][1])] for i, path in zip(active, paths, strict=True)]
            out, kept = self.tree_pass([pasts[i] for i in active], paths, reads, [queries[i] for i in active])
            for j, i in enumerate(active):
                rows[i, slot + 1, : ks[i]] = out[j][0]
                pasts[i] = kept(j)
        self.last_items(queries, forced, placed, chosen)
        return chosen, rows
