"""Passes for single-token identifiers (``[A]`` … ``[Z]`` in most tokenizers): fixed-stride slots.

Token layout after a prompt (which ends with the ranking's ``head``, e.g. ``[``)::

    prompt… [ | id(σ0) ] > [ | id(σ1) ] > [ | … | id(σ_{K-1})
              ^row 0       ^row 1                ^row K-1

Row i is read at the last separator token before slot i, so every slot is ``step`` tokens (the
identifier and its separator) and a pass reads every ``step``-th position. Held KV is kept in the
batch's left-padded layout: [1, H, P + slots·step, D].
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from rsd_rerank.session.forward import KV, copied_row
from rsd_rerank.session.passes import Passes

__all__ = ["SingleTokenPasses"]


class SingleTokenPasses(Passes):
    """Verification passes and stepwise decoding where every identifier is one token."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k_max = max(self.ks)
        self.sep = torch.tensor(self.sep_tokens, dtype=torch.long, device=self.device)
        # Identifier ids per query, padded to the largest K (padded columns are masked to -inf).
        self.first_ids = self._padded_ids([layout.first_ids for layout in self.layouts], k_max)
        self.later_ids = self._padded_ids([layout.later_ids for layout in self.layouts], k_max)

    def _padded_ids(self, ids: list[tuple[int, ...]], width: int) -> torch.Tensor:
        return torch.tensor([list(row) + [row[0]] * (width - len(row)) for row in ids], device=self.device)

    def row0(self) -> torch.Tensor:
        queries = torch.arange(len(self.ks), device=self.device)
        return self.rows(torch.stack(self.prompts.last_logits), queries, first=True)

    @functools.cache  # noqa: B019 (a pure function of the prompt, kept as long as the session's passes)
    def row0_alone(self, q: int) -> torch.Tensor:
        # The prompt was prefilled alone; its logits are already a function of the prompt only.
        return self.rows(self.prompts.last_logits[q][None], torch.tensor([q], device=self.device), first=True)[
            0, : self.ks[q]
        ]

    def whole_pass(self, q: int, rankings: torch.Tensor) -> torch.Tensor:
        k, n = self.ks[q], self.prompts.lengths[q]
        qs = torch.tensor([q], device=self.device)
        # A contiguous copy: the batch's padded KV has strides that depend on the other prompts.
        past = [(k_.contiguous(), v_.contiguous()) for k_, v_ in self.prompts.unpadded(q)]
        row0 = self.row0_alone(q)
        out = []
        for b, ranking in enumerate(rankings):
            tokens = self.slot_tokens(ranking[None, : k - 1], qs, first_slot=0)  # [1, (K-1)*step]
            positions = n + torch.arange(tokens.shape[1], device=self.device)[None]
            keep = torch.arange(self.step - 1, tokens.shape[1], self.step)
            logits, _, _ = self.forward(tokens, [(k_, v_) for k_, v_ in past], None, positions, keep, [q], b > 0)
            out.append(torch.cat([row0[None], self.rows(logits, qs)[0, :, :k]]))
        return torch.stack(out)

    def rows(self, logits: torch.Tensor, queries: torch.Tensor, first: bool = False) -> torch.Tensor:
        """[B, …, K_max] next-identifier log-distributions of ``logits`` [B, …, V], one sequence per entry of
        ``queries`` [B], over that query's own K identifiers (-inf past its K). ``first``: slot 0's ids."""
        ids = (self.first_ids if first else self.later_ids)[queries]  # [B, K_max]
        index = ids.reshape(ids.shape[0], *([1] * (logits.dim() - 2)), -1)
        picked = logits.gather(-1, index.expand(*logits.shape[:-1], -1))
        own = torch.arange(ids.shape[1], device=self.device)[None, :] < self.k[queries][:, None]
        return torch.log_softmax(picked.masked_fill(~own.reshape(index.shape), float("-inf")), dim=-1)

    def slot_tokens(self, items: torch.Tensor, queries: torch.Tensor, first_slot: int) -> torch.Tensor:
        """[B, n*step] identifier + separator tokens for ``items`` [B, n] of ``queries`` [B] from slot ``first_slot`` on."""
        batch, n = items.shape
        ids = self.later_ids[queries[:, None], items]
        if first_slot == 0 and n:
            ids[:, 0] = self.first_ids[queries, items[:, 0]]
        sep = self.sep.expand(batch, n, -1)
        return torch.cat([ids[:, :, None], sep], dim=2).reshape(batch, n * self.step)

    def past(self, queries: torch.Tensor, slots: int) -> KV:
        """[B, H, P + slots*step, D] per layer: each sequence's prompt (left-padded) and the first ``slots``
        slots of its query's held ranking."""
        length = self.prompts.width + slots * self.step
        q_list = queries.tolist()
        if q_list == list(range(len(self.ks))) and (slots == 0 or all(kv is None for kv in self.held.kv)):
            return self.prompts.kv  # every prompt, in order: no copy
        layers = []
        for layer in range(len(self.prompts.kv)):
            parts_k, parts_v = [], []
            for q in q_list:
                held = self.held.kv[q]
                if held is None or slots == 0:
                    k_, v_ = self.prompts.kv[layer]
                    parts_k.append(k_[q : q + 1])
                    parts_v.append(v_[q : q + 1])
                else:
                    k_, v_ = held[layer]
                    parts_k.append(k_[:, :, :length])
                    parts_v.append(v_[:, :, :length])
            layers.append((torch.cat(parts_k), torch.cat(parts_v)))
        return layers

    def mask(self, queries: torch.Tensor, slots: int, new: torch.Tensor, padded: bool) -> torch.Tensor | None:
        """[B, P + slots*step + n] prompt mask (left padding), ones for the held slots, ``new`` [B, n] after;
        None where nothing is padded, so that the model takes its plain causal path (faster, and exactly
        what a single query gets)."""
        if not padded:
            return None
        past = torch.ones(len(queries), slots * self.step, dtype=torch.long, device=self.device)
        return torch.cat([self.prompts.mask[queries], past, new.long()], dim=1)

    def verification_pass(
        self, rankings: dict[int, torch.Tensor], shared: dict[int, list[int]], needing: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, Callable[[int], KV]]]:
        # Every sequence is fed from the smallest shared prefix among them, right-padded to the longest tail.
        start_slot = min(min(shared[q]) for q in needing)
        queries = torch.cat([torch.full((rankings[q].shape[0],), q, device=self.device) for q in needing])
        rs = [rankings[q] for q in needing]
        k_max = max(self.ks[q] for q in needing)
        # Each query's slots start_slot..K_q-2, padded to the longest (padding is masked out below).
        items = torch.cat(
            [torch.nn.functional.pad(r[:, start_slot : r.shape[1] - 1], (0, k_max - r.shape[1])) for r in rs]
        )
        tokens = self.slot_tokens(items, queries, first_slot=start_slot)  # [R, n_slots*step]
        real = torch.cat(
            [
                torch.full((r.shape[0],), (self.ks[q] - 1 - start_slot) * self.step, device=self.device)
                for q, r in zip(needing, rs, strict=True)
            ]
        )
        fed = torch.arange(tokens.shape[1], device=self.device)[None, :] < real[:, None]
        tokens = tokens.masked_fill(~fed, self.pad_id)
        positions = (
            self.prompts.length_tensor[queries][:, None]
            + start_slot * self.step
            + torch.arange(tokens.shape[1], device=self.device)[None, :]
        )
        keep = torch.arange(self.step - 1, tokens.shape[1], self.step)
        padded = self.prompts.left_padded or len({self.ks[q] for q in needing}) > 1
        logits, cache, _ = self.forward(
            tokens,
            self.past(queries, start_slot),
            self.mask(queries, start_slot, fed, padded),
            positions,
            keep,
            queries=needing,
        )
        rows = self.rows(logits, queries)  # [R, n_slots, K_max]
        full_len = self.prompts.width + start_slot * self.step + tokens.shape[1]
        kv = self.forward.kv_of(cache, full_len)
        new_rows, new_kv, at = {}, {}, 0
        for q, r in zip(needing, rs, strict=True):
            b, k = r.shape[0], self.ks[q]
            held = self.held.rows[q][: start_slot + 1]  # rows of slots 0..start_slot: unchanged by the pass
            fresh = rows[at : at + b, : k - 1 - start_slot, :k]
            new_rows[q] = torch.cat([held.expand(b, -1, -1), fresh], dim=1)
            length = self.prompts.width + (k - 1) * self.step
            new_kv[q] = functools.partial(copied_row, [(k_[:, :, :length], v_[:, :, :length]) for k_, v_ in kv], at)
            at += b
        return new_rows, new_kv

    def stepwise(
        self, queries: list[int], forced: torch.Tensor | None, row0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qs = torch.tensor(queries, device=self.device)
        ks = [self.ks[q] for q in queries]
        placed, chosen, rows = self.start(queries, row0)
        active_list = list(range(len(queries)))  # the queries (indices into ``queries``) still decoding
        active = torch.arange(len(queries), device=self.device)
        kv = self.past(qs, 0)
        for slot in range(max(ks) - 1):
            still = [i for i in active_list if ks[i] - 1 > slot]
            if len(still) < len(active_list):  # queries whose K-1 slots are done leave the batch
                rows_kept = torch.tensor([active_list.index(i) for i in still], device=self.device)
                kv = [(k_[rows_kept], v_[rows_kept]) for k_, v_ in kv]
                active_list, active = still, torch.tensor(still, device=self.device)
            row = rows[active, slot]
            if forced is None:
                item = row.masked_fill(placed[active], float("-inf")).argmax(dim=-1)
            else:
                item = forced[active, slot]
            chosen[active, slot] = item
            placed[active, item] = True
            tokens = self.slot_tokens(item[:, None], qs[active], first_slot=slot)
            fed = torch.ones_like(tokens, dtype=torch.bool)
            positions = (
                self.prompts.length_tensor[qs[active]][:, None]
                + slot * self.step
                + torch.arange(self.step, device=self.device)
            )
            logits, cache, _ = self.forward(
                tokens,
                kv,
                self.mask(qs[active], slot, fed, self.prompts.left_padded),
                positions,
                keep=1,
                queries=[queries[i] for i in active_list],
            )
            kv = self.forward.kv_of(cache, self.prompts.width + (slot + 1) * self.step)
            rows[active, slot + 1] = self.rows(logits[:, -1], qs[active])
        self.last_items(queries, forced, placed, chosen)
        return chosen, rows

    def identifier_unembedding(self, query: int) -> torch.Tensor:
        """[K, H] the LM head's rows of the query's later-slot identifier tokens."""
        weight = self.forward.model.get_output_embeddings().weight
        return weight[self.later_ids[query, : self.ks[query]]].detach().float()
