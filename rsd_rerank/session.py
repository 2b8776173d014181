"""One target LLM, one prompt: prefill once, then verify whole rankings in single forwards.

This is the only code that calls the model's forward. Token layout after the prompt (which ends
with the ranking's ``head``, e.g. ``[``)::

    prompt… [ | id(σ0) ] > [ | id(σ1) ] > [ | … | id(σ_{K-1})
              ^row 0       ^row 1                ^row K-1

Row i of a verification matrix is read at the last separator token before slot i; row 0 comes from
the prefill and never changes. A verification pass therefore feeds K-1 identifiers with their
separators (76 tokens for K=20 with SmolLM2's tokenizer) on top of the cached prompt, and only the
tail that differs from the last verified ranking: rows and KV of the shared prefix are reused.

Every forward after the prompt goes through ``_forward``, which counts it (``passes``), records the
tokens it fed (``fed_tokens``) and times it on a clock that synchronises the device first
(``clock``): the decoding trace reads its passes and seconds from here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from rsd_rerank.prompt import Prompt, PromptConfig, build_prompt, ranking_text
from rsd_rerank.targets import Target

__all__ = ["Generation", "TargetSession", "Verification", "accepted_length", "greedy_choices"]

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Verification:
    """The result of one LLM pass over B teacher-forced rankings of K items."""

    rankings: torch.Tensor
    """[B, K] the verified rankings (item indices)."""
    matrices: torch.Tensor
    """[B, K, K] log-probabilities over the K identifiers: row i (slot) = next identifier after ranking[:i], column = item."""
    greedy: torch.Tensor
    """[B, K] the LLM's greedy item at each slot among the items not placed before it."""
    accepted: torch.Tensor
    """[B] i*: length of the longest prefix equal to the greedy choices (K when the whole ranking verifies)."""


@dataclass(frozen=True)
class Generation:
    """Free greedy generation from the chat prompt (RankZephyr-style), not constrained to identifiers."""

    text: str
    """The generated text, special tokens dropped."""
    new_tokens: int
    """Tokens generated (each one a decode step after generation's own prefill)."""
    seconds: float
    """End to end, generation's own prefill of the prompt included."""


def greedy_choices(rankings: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """[B, K] argmax of each row over the items not placed at earlier slots of the same ranking."""
    k = rankings.shape[1]
    position = torch.argsort(rankings, dim=1)  # [B, K] slot of each item
    placed = position[:, None, :] < torch.arange(k, device=rankings.device)[None, :, None]  # [B, slot, item]
    return matrices.masked_fill(placed, float("-inf")).argmax(dim=-1)


def accepted_length(rankings: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """[B] i*: the number of leading slots where the ranking equals the greedy choice."""
    return (rankings == greedy).long().cumprod(dim=1).sum(dim=1)


class TargetSession:
    """A target LLM primed with one query and its K candidates.

    Builds RankLLM's prompt, checks the identifier tokenisation, prefills the prompt once and keeps
    its KV cache. ``first_slot()`` is single-token decoding (FIRST); ``verify()`` scores whole
    rankings in one forward; ``greedy_ranking()`` is the exact target, the constrained greedy
    autoregressive ranking with separators forced.

    Args:
        target: the LLM and tokenizer (see ``rsd_rerank.targets.load_target``).
        query: the query text.
        docs: K candidate docs, as RankLLM ``Candidate.doc`` dicts or plain strings.
        config: prompt template and passage truncation.
    """

    def __init__(
        self,
        target: Target,
        query: str,
        docs: Sequence[Mapping[str, Any] | str],
        config: PromptConfig = PromptConfig(),
    ):
        self._prefill(target, build_prompt(target.tokenizer, query, docs, config, max_tokens=target.max_positions))

    @classmethod
    def from_request(cls, target: Target, request: Any, config: PromptConfig = PromptConfig()) -> TargetSession:
        """A session on a RankLLM ``Request`` (its query text and its candidates' docs)."""
        return cls(target, request.query.text, [c.doc for c in request.candidates], config)

    @classmethod
    def from_prompt(cls, target: Target, prompt: Prompt) -> TargetSession:
        """A session on a ready prompt (e.g. RankLLM's messages through ``prompt_from_messages``)."""
        session = cls.__new__(cls)
        session._prefill(target, prompt)
        return session

    def _prefill(self, target: Target, prompt: Prompt) -> None:
        self.target = target
        self.prompt = prompt
        layout = prompt.layout
        self.k = layout.k
        self.device = target.model.device
        self._first_ids = torch.tensor(layout.first_ids, device=self.device)
        self._later_ids = torch.tensor(layout.later_ids, device=self.device)
        self._sep = torch.tensor(layout.sep, dtype=torch.long, device=self.device)
        self._step = 1 + len(layout.sep)  # tokens per slot after the prompt: identifier + separator

        self.passes = 0
        """Forwards after the prompt so far: verifications, decode steps of the greedy target."""
        self.fed_tokens: list[int] = []
        """Tokens per sequence that each of those forwards fed (the verified-prefix reuse shows here)."""
        self.forward_seconds = 0.0
        """Seconds spent in those forwards."""
        start = self.clock()
        ids = torch.tensor([prompt.token_ids], device=self.device)
        logits, cache = self._forward(ids, self._cache(None, 0, 1), keep=torch.tensor([ids.shape[1] - 1]), count=False)
        self._prompt_kv = self._kv_of(cache, row=0, expected_len=ids.shape[1])
        self._row0 = self._rows(logits[0], self._first_ids)[0]  # [K]
        self.prefill_seconds = self.clock() - start
        self.prompt_tokens = ids.shape[1]
        self._greedy: list[int] | None = None
        self.forget()

    def forget(self) -> None:
        """Drop the KV and rows of the last verified ranking (the prompt's stay), so that the next
        decoding run costs what it would cost alone (timing comparisons between methods)."""
        self._cached_items: tuple[int, ...] = ()
        self._cached_kv: KV = self._prompt_kv
        self._cached_rows = self._row0[None]

    # -- model access -------------------------------------------------------------------------

    def clock(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _cache(self, kv: KV | None, kv_len: int, batch: int) -> DynamicCache:
        """A cache holding the first ``kv_len`` positions of ``kv`` for each of ``batch`` sequences."""
        config = self.target.model.config
        if kv is None:
            return DynamicCache(config=config)
        return DynamicCache(
            ddp_cache_data=[
                (k[:, :, :kv_len].expand(batch, -1, -1, -1), v[:, :, :kv_len].expand(batch, -1, -1, -1)) for k, v in kv
            ],
            config=config,
        )

    @torch.inference_mode()
    def _forward(
        self, input_ids: torch.Tensor, cache: DynamicCache, keep: torch.Tensor | int, count: bool = True
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Logits [B, len(keep), V] at positions ``keep`` of ``input_ids`` [B, n], after ``cache``.

        The only call of the model's forward; ``count`` is off for the prompt's own prefill.
        """
        start = self.clock() if count else 0.0
        if isinstance(keep, torch.Tensor):
            keep = keep.to(self.device)
        # logits_to_keep: only the slot positions go through the LM head, not every fed token.
        out = self.target.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits.float()
        if count:
            self.passes += 1
            self.fed_tokens.append(input_ids.shape[1])
            self.forward_seconds += self.clock() - start
        return logits, out.past_key_values

    @staticmethod
    def _kv_of(cache: DynamicCache, row: int, expected_len: int) -> KV:
        kv = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            if keys is None or keys.shape[-2] != expected_len:
                raise ValueError(
                    f"the model's KV cache layer {type(layer).__name__} does not keep every position "
                    "(sliding-window or compressed cache); TargetSession needs full attention caches"
                )
            kv.append((keys[row : row + 1].clone(), values[row : row + 1].clone()))
        return kv

    @staticmethod
    def _rows(logits: torch.Tensor, identifier_ids: torch.Tensor) -> torch.Tensor:
        """[…, K] next-identifier log-distributions restricted to the K identifier tokens."""
        return torch.log_softmax(logits[..., identifier_ids], dim=-1)

    def _slot_tokens(self, items: torch.Tensor, first_slot: int) -> torch.Tensor:
        """[B, n*step] identifier + separator tokens for ``items`` [B, n] placed from slot ``first_slot`` on."""
        batch, n = items.shape
        ids = self._later_ids[items]
        if first_slot == 0 and n:
            ids[:, 0] = self._first_ids[items[:, 0]]
        sep = self._sep.expand(batch, n, -1)
        return torch.cat([ids[:, :, None], sep], dim=2).reshape(batch, n * self._step)

    # -- public API --------------------------------------------------------------------------

    def first_slot(self) -> torch.Tensor:
        """[K] log-probabilities of the first identifier right after the prompt (single-token decoding)."""
        return self._row0.clone()

    def _as_rankings(self, rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor) -> torch.Tensor:
        r = torch.as_tensor(rankings, dtype=torch.long, device=self.device)
        if r.dim() == 1:
            r = r[None]
        if r.dim() != 2 or r.shape[1] != self.k:
            raise ValueError(f"rankings must have shape [B, {self.k}], got {tuple(r.shape)}")
        expected = torch.arange(self.k, device=self.device)
        if not torch.equal(r.sort(dim=1).values, expected.expand_as(r)):
            raise ValueError(f"every ranking must be a permutation of 0..{self.k - 1}")
        return r

    def _shared_prefix(self, ranking: torch.Tensor) -> int:
        n = 0
        for cached, item in zip(self._cached_items, ranking.tolist(), strict=False):
            if cached != item:
                break
            n += 1
        return n

    def verify(self, rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor) -> Verification:
        """Teacher-force one ranking [K] or a batch [B, K] after the cached prompt: one forward in all.

        Only the tail after the prefix shared with the last verified ranking is fed; the rows and KV
        of that prefix are reused.
        """
        r = self._as_rankings(rankings)
        batch, k = r.shape
        # Slot K-1's row only needs the separator after slot K-2; identifier K-1 is never fed.
        shared = min(min(self._shared_prefix(row) for row in r), k - 1)
        if shared == k - 1:
            new_rows = torch.empty(batch, 0, k, device=self.device)
            kv_rows, new_kv = None, self._cached_kv
        else:
            tokens = self._slot_tokens(r[:, shared : k - 1], first_slot=shared)
            keep = torch.arange(self._step - 1, tokens.shape[1], self._step)
            kv_len = self.prompt_tokens + shared * self._step
            logits, cache = self._forward(tokens, self._cache(self._cached_kv, kv_len, batch), keep)
            new_rows = self._rows(logits, self._later_ids)  # [B, K-1-shared, K]
            kv_rows, new_kv = cache, None
        matrices = torch.cat([self._cached_rows[: shared + 1].expand(batch, -1, -1), new_rows], dim=1)
        greedy = greedy_choices(r, matrices)
        accepted = accepted_length(r, greedy)
        best = int(accepted.argmax())
        if kv_rows is not None:
            full_len = self.prompt_tokens + (k - 1) * self._step
            new_kv = self._kv_of(kv_rows, row=best, expected_len=full_len)
        self._cached_items = tuple(r[best, : k - 1].tolist())
        self._cached_kv = new_kv
        self._cached_rows = matrices[best]
        return Verification(rankings=r, matrices=matrices, greedy=greedy, accepted=accepted)

    def stepwise_rows(self, ranking: Sequence[int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Decode slot by slot on a growing KV cache, one forward per slot (K-1 in all).

        With ``ranking`` the items are teacher-forced; without, each slot takes the greedy item
        among those not yet placed. Returns the ranking and its [K, K] rows: the reference that
        ``verify`` must reproduce in one pass.
        """
        forced = None if ranking is None else self._as_rankings(ranking)[0].tolist()
        cache = self._cache(self._prompt_kv, self.prompt_tokens, 1)
        row = self._row0
        rows, chosen = [row], []
        remaining = set(range(self.k))
        for slot in range(self.k - 1):
            if forced is None:
                mask = torch.full_like(row, float("-inf"))
                mask[list(remaining)] = 0.0
                item = int((row + mask).argmax())
            else:
                item = forced[slot]
            chosen.append(item)
            remaining.discard(item)
            tokens = self._slot_tokens(torch.tensor([[item]], device=self.device), first_slot=slot)
            logits, cache = self._forward(tokens, cache, keep=1)
            row = self._rows(logits[0, -1], self._later_ids)
            rows.append(row)
        chosen += list(remaining) if forced is None else forced[-1:]
        return chosen, torch.stack(rows)

    def greedy_ranking(self) -> list[int]:
        """The exact target σ_tr: constrained greedy autoregressive ranking (K-1 incremental decode steps, memoised)."""
        if self._greedy is None:
            self._greedy, _ = self.stepwise_rows()
        return list(self._greedy)

    @torch.inference_mode()
    def generate(self, max_new_tokens: int | None = None, min_new_tokens: int = 0) -> Generation:
        """RankZephyr-style free greedy generation from the chat prompt (without the forced ``head``).

        Generation runs its own prefill, as a RankLLM user's would; by default it may write the
        ranking string's length plus 8 tokens (``min_new_tokens`` forces a length, for timing). Its steps are not verification passes and are not
        added to ``passes``.
        """
        tokenizer = self.target.tokenizer
        head = len(self.prompt.layout.head)
        ids = torch.tensor([self.prompt.token_ids[: len(self.prompt.token_ids) - head]], device=self.device)
        if max_new_tokens is None:
            max_new_tokens = len(tokenizer.encode(ranking_text(range(self.k)), add_special_tokens=False)) + 8
        start = self.clock()
        out = self.target.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        seconds = self.clock() - start
        new = out[0, ids.shape[1] :]
        return Generation(tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0]), seconds)
