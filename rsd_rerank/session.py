"""One target LLM, Q prompts: prefill them together once, then verify whole rankings of all Q in single forwards.

This is the only code that calls the model's forward. Token layout after a prompt (which ends with
the ranking's ``head``, e.g. ``[``)::

    prompt… [ | id(σ0) ] > [ | id(σ1) ] > [ | … | id(σ_{K-1})
              ^row 0       ^row 1                ^row K-1

Row i of a verification matrix is read at the last separator token before slot i; row 0 comes from
the prefill and never changes. A verification pass therefore feeds K-1 identifiers with their
separators (76 tokens for K=20 with SmolLM2's tokenizer) on top of the cached prompt, and only the
tail that differs from the query's last verified ranking: rows and KV of the shared prefix are reused.

Batching. The Q prompts are prefilled one by one and their KV left-padded to the longest; every later
forward has an explicit attention mask and position ids (transformers would otherwise number the
padding). Every
query keeps the KV of its last verified ranking. A verification pass takes any set of queries, each
with its own B rankings of its own K, and feeds all of them in one forward: every sequence starts at
the smallest shared prefix among them, the sequences are right-padded to the longest tail, and the
mask hides both paddings. Rows of a ranking's slots up to its own shared prefix are the stored rows
of the verified ranking (they condition on the same items), so the verified prefix and the bonus
item are accepted again in any precision: Theorem 1 holds by construction, in bf16 as in fp32.

Every forward after the prompts goes through ``_forward``, which counts it (``passes``, and per
query ``query_passes``), records the tokens it fed per sequence (``fed_tokens``) and times it on a
clock that synchronises the device first (``clock``): the decoding trace reads passes and seconds
from here.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from rsd_rerank.prompt import Prompt, PromptConfig, build_prompt, request_prompts, warn_context_cuts
from rsd_rerank.targets import Target
from rsd_rerank.tree import Block, Read, Trie, additive_mask

__all__ = [
    "Expansion",
    "Generation",
    "TargetSession",
    "Verification",
    "accepted_length",
    "greedy_choices",
    "greedy_item",
]

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Verification:
    """The result of one LLM pass over B teacher-forced rankings of one query's K items."""

    rankings: torch.Tensor
    """[B, K] the verified rankings (item indices)."""
    matrices: torch.Tensor
    """[B, K, K] log-probabilities over the K identifiers: row i (slot) = next identifier after ranking[:i], column = item."""
    greedy: torch.Tensor
    """[B, K] the LLM's greedy item at each slot among the items not placed before it."""
    accepted: torch.Tensor
    """[B] i*: length of the longest prefix equal to the greedy choices (K when the whole ranking verifies)."""


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


@dataclass(frozen=True)
class Generation:
    """Free greedy generation from the chat prompt (RankZephyr-style), not constrained to identifiers."""

    text: str
    """The generated text, special tokens dropped."""
    new_tokens: int
    """Tokens generated (each one a decode step after generation's own prefill)."""
    seconds: float
    """End to end, generation's own prefill of the prompt included (for a batch: the whole batch's)."""


def greedy_choices(rankings: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """[B, K] argmax of each row over the items not placed at earlier slots of the same ranking."""
    k = rankings.shape[1]
    position = torch.argsort(rankings, dim=1)  # [B, K] slot of each item
    placed = position[:, None, :] < torch.arange(k, device=rankings.device)[None, :, None]  # [B, slot, item]
    return matrices.masked_fill(placed, float("-inf")).argmax(dim=-1)


def greedy_item(row: torch.Tensor, placed: Sequence[int]) -> int:
    """The best item of a [K] row among those not in ``placed``."""
    if not placed:
        return int(row.argmax())
    return int(row.index_fill(0, torch.tensor(list(placed), device=row.device), float("-inf")).argmax())


def accepted_length(rankings: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """[B] i*: the number of leading slots where the ranking equals the greedy choice."""
    return (rankings == greedy).long().cumprod(dim=1).sum(dim=1)


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    # transformers 5.23 renamed the forward's `past_key_values` to `cache` (the old name warns on every
    # call and goes in 5.40); the lent GPU machine runs an older 5.x that only knows the old name.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _out_cache(out) -> DynamicCache:
    return out["cache"] if "cache" in out else out["past_key_values"]


def _copied_row(kv: KV, offset: int, row: int) -> KV:
    """Sequence ``offset + row`` of a batch's KV, copied so that the whole batch's cache can be freed."""
    i = offset + row
    return [(k_[i : i + 1].clone(), v_[i : i + 1].clone()) for k_, v_ in kv]


class TargetSession:
    """A target LLM primed with Q queries and their candidates (Q = 1 for the plain constructor).

    Builds RankLLM's prompts, checks the identifier tokenisation, prefills the prompts together once
    and keeps their KV caches. ``first_slot(q)`` is single-token decoding (FIRST); ``verify`` /
    ``verify_many`` score whole rankings in one forward; ``greedy_ranking(q)`` /
    ``greedy_rankings()`` are the exact target, the constrained greedy autoregressive ranking with
    separators forced; ``generate`` / ``generate_many`` are free generation. Methods that take a
    query index default to query 0, the only one of a single-query session.

    Args:
        target: the LLM and tokenizer (see ``rsd_rerank.targets.load_target``); the session works on
            the model's device and dtype.
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
        prompt = build_prompt(target.tokenizer, query, docs, config, max_tokens=target.max_positions)
        warn_context_cuts([prompt.passage_words], config)
        self._prefill(target, [prompt])

    @classmethod
    def from_request(cls, target: Target, request: Any, config: PromptConfig = PromptConfig()) -> TargetSession:
        """A session on a RankLLM ``Request`` (its query text and its candidates' docs)."""
        return cls.from_prompts(target, request_prompts(target.tokenizer, [request], config, target.max_positions))

    @classmethod
    def from_prompt(cls, target: Target, prompt: Prompt) -> TargetSession:
        """A session on a ready prompt (e.g. RankLLM's messages through ``prompt_from_messages``)."""
        return cls.from_prompts(target, [prompt])

    @classmethod
    def from_prompts(cls, target: Target, prompts: Sequence[Prompt]) -> TargetSession:
        """A session on Q ready prompts, prefilled together (their K and lengths may differ)."""
        if not prompts:
            raise ValueError("a session needs at least one prompt")
        session = cls.__new__(cls)
        session._prefill(target, list(prompts))
        return session

    # -- prefill -----------------------------------------------------------------------------

    def _prefill(self, target: Target, prompts: list[Prompt]) -> None:
        self.target = target
        self.prompts = prompts
        self.ks = [p.layout.k for p in prompts]
        self.device = target.model.device
        layouts = [p.layout for p in prompts]
        step = {1 + len(layout.sep) for layout in layouts}
        seps = {layout.sep for layout in layouts}
        if len(step) != 1 or len(seps) != 1:
            raise ValueError(
                "prompts batched in one session must share the ranking separator (same tokenizer and template)"
            )
        self._step = step.pop()  # tokens per slot after the prompt: identifier + separator
        self._sep_tokens = seps.pop()
        self._sep = torch.tensor(self._sep_tokens, dtype=torch.long, device=self.device)
        k_max = max(self.ks)
        self._k = torch.tensor(self.ks, device=self.device)
        # Multi-token identifiers take the tree-masked path (``_tree_*``); single tokens the fixed-stride one.
        self._tree = not all(layout.single_token for layout in layouts)
        if self._tree:
            self._tries = [
                (Trie.of(lo.first_pieces, self.device), Trie.of(lo.later_pieces, self.device)) for lo in layouts
            ]
        else:
            # Identifier ids per query, padded to the largest K (padded columns are masked to -inf).
            self._first_ids = self._padded_ids([layout.first_ids for layout in layouts], k_max)
            self._later_ids = self._padded_ids([layout.later_ids for layout in layouts], k_max)
        tokenizer = target.tokenizer
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

        self.passes = 0
        """Forwards after the prompts so far: verifications, decode steps of the greedy target."""
        self.query_passes = [0] * len(prompts)
        """Per query: the forwards after the prompts that it took part in."""
        self.fed_tokens: list[int] = []
        """Tokens per sequence that each of those forwards fed (the verified-prefix reuse shows here)."""
        self.fed_sequences: list[int] = []
        """Sequences in each of those forwards (queries that are done have left the batch)."""
        self.forward_seconds = 0.0
        """Seconds spent in those forwards."""

        start = self.clock()
        lengths = [len(p.token_ids) for p in prompts]
        self._width = max(lengths)  # P: every prompt's KV is left-padded to it
        mask = torch.zeros(len(prompts), self._width, dtype=torch.long, device=self.device)
        # Each prompt is prefilled alone and its KV placed, left-padded, in the batch's: a padded prefill
        # would need an explicit [B, H, P, P] attention mask (slow paths; on a CPU slower than one by one)
        # and gains little over one compute-bound forward per long prompt.
        kv: KV = []
        row0, hidden0 = [], []
        for q, prompt in enumerate(prompts):
            n = len(prompt.token_ids)
            ids = torch.tensor([prompt.token_ids], device=self.device)
            positions = torch.arange(n, device=self.device)[None]
            logits, cache, hidden = self._forward(ids, None, None, positions, keep=1, queries=None)
            hidden0.append(hidden[0, -1])
            for layer, (k_, v_) in enumerate(self._kv_of(cache, n)):
                if q == 0:
                    shape = (len(prompts), k_.shape[1], self._width, k_.shape[3])
                    kv.append((k_.new_zeros(shape), v_.new_zeros(shape)))
                kv[layer][0][q, :, self._width - n :] = k_[0]
                kv[layer][1][q, :, self._width - n :] = v_[0]
            mask[q, self._width - n :] = 1
            row0.append(logits[0, -1])
        self.prompt_lengths = lengths
        """Tokens of each prompt."""
        self._prompt_mask = mask  # [Q, P]
        self._lengths = torch.tensor(lengths, device=self.device)  # [Q] real prompt tokens
        self._left_padded = len(set(lengths)) > 1
        self._prompt_kv = kv  # [Q, H, P, D] per layer
        self._hidden0 = torch.stack(hidden0)  # [Q, H] the last hidden state of each prompt (row 0's)
        queries = torch.arange(len(prompts), device=self.device)
        if self._tree:
            self._row0 = self._tree_row0(row0)
        else:
            self._row0 = self._rows(torch.stack(row0), queries, first=True)  # [Q, K_max]
        self.prefill_seconds = self.clock() - start
        """Seconds of the prompts' prefill (for Q > 1: the whole batch's)."""
        self._greedy: dict[int, list[int]] = {}
        self.forget()

    def _padded_ids(self, ids: list[tuple[int, ...]], width: int) -> torch.Tensor:
        return torch.tensor([list(row) + [row[0]] * (width - len(row)) for row in ids], device=self.device)

    def forget(self) -> None:
        """Drop the KV and rows of every query's last verified ranking (the prompts' stay), so that the
        next decoding run costs what it would cost alone (timing comparisons between methods)."""
        self._cached_items: list[tuple[int, ...]] = [()] * len(self.prompts)
        self._cached_kv: list[KV | None] = [None] * len(self.prompts)  # None: the prompt's KV alone
        self._cached_rows = [self._row0[q, : self.ks[q]][None] for q in range(len(self.prompts))]

    # -- single-query conveniences ---------------------------------------------------------------

    def _single(self) -> None:
        if len(self.prompts) != 1:
            raise ValueError(
                f"this session holds {len(self.prompts)} queries; index them (ks, prompts, prompt_lengths)"
            )

    @property
    def k(self) -> int:
        """K of a single-query session."""
        self._single()
        return self.ks[0]

    @property
    def prompt(self) -> Prompt:
        """The prompt of a single-query session."""
        self._single()
        return self.prompts[0]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of a single-query session."""
        self._single()
        return self.prompt_lengths[0]

    # -- model access -------------------------------------------------------------------------

    def clock(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _cache(self, kv: KV | None) -> DynamicCache:
        config = self.target.model.config
        return DynamicCache(config=config) if kv is None else DynamicCache(ddp_cache_data=kv, config=config)

    @torch.inference_mode()
    def _forward(
        self,
        input_ids: torch.Tensor,
        kv: KV | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        keep: torch.Tensor | int,
        queries: Sequence[int] | None,
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Logits [B, len(keep), V] (float32) at positions ``keep`` of ``input_ids`` [B, n] after ``kv``, the
        cache, and the last hidden states [B, len(keep), H] there (the LM head's input: what prediction
        heads read).

        ``attention_mask`` [B, past + n] (None: nothing padded) and ``position_ids`` [B, n] are explicit
        (padding on both sides). The only call of the model's forward; ``queries`` are the queries it serves, None
        for the prompts' own prefill (not counted).
        """
        start = self.clock() if queries is not None else 0.0
        if isinstance(keep, torch.Tensor):
            keep = keep.to(self.device)
        # logits_to_keep: only the slot positions go through the LM head, not every fed token.
        kwargs = {_cache_kwarg(type(self.target.model)): self._cache(kv)}
        seen: list[torch.Tensor] = []
        # The LM head's input is the final-norm hidden state at the kept positions; a hook reads it
        # without asking the model for every layer's states.
        hook = self.target.model.get_output_embeddings().register_forward_pre_hook(
            lambda _module, args: seen.append(args[0])
        )
        try:
            out = self.target.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=keep,
                **kwargs,
            )
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"out of memory on {self.device} in a forward of {input_ids.shape[0]} sequences of "
                f"{input_ids.shape[1]} new tokens; lower --batch-size or --max-batch-tokens"
            ) from err
        finally:
            hook.remove()
        logits = out.logits.float()
        if queries is not None:
            self.passes += 1
            for q in set(queries):
                self.query_passes[q] += 1
            self.fed_tokens.append(input_ids.shape[1])
            self.fed_sequences.append(input_ids.shape[0])
            self.forward_seconds += self.clock() - start
        return logits, _out_cache(out), seen[-1].float()

    @staticmethod
    def _kv_of(cache: DynamicCache, expected_len: int) -> KV:
        kv = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            if keys is None or keys.shape[-2] != expected_len:
                raise ValueError(
                    f"the model's KV cache layer {type(layer).__name__} does not keep every position "
                    "(sliding-window or compressed cache); TargetSession needs full attention caches"
                )
            kv.append((keys, values))
        return kv

    def _rows(self, logits: torch.Tensor, queries: torch.Tensor, first: bool = False) -> torch.Tensor:
        """[B, …, K_max] next-identifier log-distributions of ``logits`` [B, …, V], one sequence per entry of
        ``queries`` [B], over that query's own K identifiers (-inf past its K). ``first``: slot 0's ids."""
        ids = (self._first_ids if first else self._later_ids)[queries]  # [B, K_max]
        index = ids.reshape(ids.shape[0], *([1] * (logits.dim() - 2)), -1)
        picked = logits.gather(-1, index.expand(*logits.shape[:-1], -1))
        own = torch.arange(ids.shape[1], device=self.device)[None, :] < self._k[queries][:, None]
        return torch.log_softmax(picked.masked_fill(~own.reshape(index.shape), float("-inf")), dim=-1)

    def _slot_tokens(self, items: torch.Tensor, queries: torch.Tensor, first_slot: int) -> torch.Tensor:
        """[B, n*step] identifier + separator tokens for ``items`` [B, n] of ``queries`` [B] from slot ``first_slot`` on."""
        batch, n = items.shape
        ids = self._later_ids[queries[:, None], items]
        if first_slot == 0 and n:
            ids[:, 0] = self._first_ids[queries, items[:, 0]]
        sep = self._sep.expand(batch, n, -1)
        return torch.cat([ids[:, :, None], sep], dim=2).reshape(batch, n * self._step)

    def _past(self, queries: torch.Tensor, slots: int) -> KV:
        """[B, H, P + slots*step, D] per layer: each sequence's prompt (left-padded) and the first ``slots``
        slots of its query's cached ranking."""
        length = self._width + slots * self._step
        q_list = queries.tolist()
        if q_list == list(range(len(self.prompts))) and (slots == 0 or all(kv is None for kv in self._cached_kv)):
            return self._prompt_kv  # every prompt, in order: no copy
        layers = []
        for layer in range(len(self._prompt_kv)):
            parts_k, parts_v = [], []
            for q in q_list:
                cached = self._cached_kv[q]
                if cached is None or slots == 0:
                    k_, v_ = self._prompt_kv[layer]
                    parts_k.append(k_[q : q + 1])
                    parts_v.append(v_[q : q + 1])
                else:
                    k_, v_ = cached[layer]
                    parts_k.append(k_[:, :, :length])
                    parts_v.append(v_[:, :, :length])
            layers.append((torch.cat(parts_k), torch.cat(parts_v)))
        return layers

    def _mask(self, queries: torch.Tensor, slots: int, new: torch.Tensor, padded: bool) -> torch.Tensor | None:
        """[B, P + slots*step + n] prompt mask (left padding), ones for the cached slots, ``new`` [B, n] after;
        None where nothing is padded, so that the model takes its plain causal path (faster, and exactly
        what a single query gets)."""
        if not padded:
            return None
        past = torch.ones(len(queries), slots * self._step, dtype=torch.long, device=self.device)
        return torch.cat([self._prompt_mask[queries], past, new.long()], dim=1)

    # -- public API --------------------------------------------------------------------------

    def first_slot(self, query: int = 0) -> torch.Tensor:
        """[K] log-probabilities of the first identifier right after the prompt (single-token decoding)."""
        return self._row0[query, : self.ks[query]].clone()

    def _as_rankings(self, rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor, k: int) -> torch.Tensor:
        r = torch.as_tensor(rankings, dtype=torch.long, device=self.device)
        if r.dim() == 1:
            r = r[None]
        if r.dim() != 2 or r.shape[1] != k:
            raise ValueError(f"rankings must have shape [B, {k}], got {tuple(r.shape)}")
        expected = torch.arange(k, device=self.device)
        if not torch.equal(r.sort(dim=1).values, expected.expand_as(r)):
            raise ValueError(f"every ranking must be a permutation of 0..{k - 1}")
        return r

    def _shared_prefix(self, ranking: list[int], cached: tuple[int, ...]) -> int:
        n = 0
        for held, item in zip(cached, ranking, strict=False):
            if held != item:
                break
            n += 1
        return n

    def verify(self, rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor, query: int = 0) -> Verification:
        """Teacher-force one ranking [K] or a batch [B, K] of one query after its cached prompt: one forward in all.

        Only the tail after the prefix shared with the query's last verified ranking is fed; the
        rows and KV of that prefix are reused.
        """
        return self.verify_many({query: rankings})[query]

    def verify_many(self, rankings: Mapping[int, Sequence[Sequence[int]] | torch.Tensor]) -> dict[int, Verification]:
        """Verify the rankings [B_q, K_q] of several queries in one forward (none where every ranking's
        first K-1 items are already the query's verified ones)."""
        rs = {q: self._as_rankings(r, self.ks[q]) for q, r in rankings.items()}
        shared = {
            q: [min(self._shared_prefix(row, self._cached_items[q]), self.ks[q] - 1) for row in r.tolist()]
            for q, r in rs.items()
        }
        # Slot K-1's row only needs the separator after slot K-2; identifier K-1 is never fed.
        needing = [q for q in rs if min(shared[q]) < self.ks[q] - 1]
        new_rows: dict[int, torch.Tensor] = {}
        new_kv: dict[int, Callable[[int], KV]] = {}
        if needing:
            verification_pass = self._tree_verification_pass if self._tree else self._verification_pass
            new_rows, new_kv = verification_pass(rs, shared, needing)
        out = {}
        for q, r in rs.items():
            k = self.ks[q]
            cached_rows = self._cached_rows[q]  # [n+1, K] rows of the cached ranking's slots 0..n
            b = r.shape[0]
            held = torch.cat([cached_rows, cached_rows.new_zeros(k - cached_rows.shape[0], k)])  # [K, K]
            if q in new_rows:
                fresh = new_rows[q]  # [B, K, K], rows before the pass's first fed slot are the held ones
            else:
                fresh = held.expand(b, -1, -1)
            slot = torch.arange(k, device=self.device)
            own = slot[None, :] <= torch.tensor(shared[q], device=self.device)[:, None]  # [B, K]
            matrices = torch.where(own[:, :, None], held.expand(b, -1, -1), fresh)
            greedy = greedy_choices(r, matrices)
            accepted = accepted_length(r, greedy)
            best = int(accepted.argmax())
            if q in new_kv:
                self._cached_kv[q] = new_kv[q](best)
                self._cached_items[q] = tuple(r[best, : k - 1].tolist())
                self._cached_rows[q] = matrices[best]
            out[q] = Verification(rankings=r, matrices=matrices, greedy=greedy, accepted=accepted)
        return out

    def first_hidden(self, query: int = 0) -> torch.Tensor:
        """[H] the last hidden state after the prompt, where the first slot's row is read."""
        return self._hidden0[query].clone()

    def identifier_unembedding(self, query: int = 0) -> torch.Tensor:
        """[K, H] the LM head's rows of the query's later-slot identifier tokens (what prediction heads
        score items with); single-token identifiers only."""
        if self._tree:
            raise ValueError("prediction heads need single-token identifiers; this template's are several tokens")
        weight = self.target.model.get_output_embeddings().weight
        return weight[self._later_ids[query, : self.ks[query]]].detach().float()

    def expand(self, prefix: Sequence[int], paths: Sequence[Sequence[int]], query: int = 0) -> Expansion:
        """Teacher-force ``prefix`` and a tree of continuations after it in one tree-masked forward (a pass).

        ``paths`` are the tree's nodes, each the items after the prefix (a node's parent, its path
        without the last item, is the prefix or another node). Each node feeds one slot's tokens that
        see the prompt, the prefix and their ancestors' tokens only, at the positions of a linear
        ranking, so its row is what ``verify`` reads after prefix + path. The prefix is fed after the
        part of it the query's cache holds (its last item always). Afterwards the cache holds prefix +
        the accepted path, so a next pass from there feeds only what is new. Single-token identifiers.
        """
        if self._tree:
            raise ValueError("tree verification of rankings needs single-token identifiers (a letters template)")
        k, prefix, paths = self.ks[query], list(prefix), [tuple(p) for p in paths]
        if not prefix or len(prefix) + max((len(p) for p in paths), default=0) > k - 1:
            raise ValueError(f"a prefix of 1..{k - 1} items and paths that end by slot {k - 2}")
        known = set(paths)
        for path in paths:
            assert path and (len(path) == 1 or path[:-1] in known), f"node {path} has no parent in the tree"
            assert len(set(prefix + list(path))) == len(prefix) + len(path), "an item placed twice"
        shared = min(self._shared_prefix(prefix, self._cached_items[query]), len(prefix) - 1)
        step, q = self._step, torch.tensor([query], device=self.device)
        chain = torch.tensor([prefix[shared:]], device=self.device)
        tokens = [self._slot_tokens(chain, q, first_slot=shared)[0]]
        n_chain = tokens[0].shape[0]
        slots = [len(prefix) + len(p) - 1 for p in paths]
        for path, slot in zip(paths, slots, strict=True):
            tokens.append(self._slot_tokens(torch.tensor([[path[-1]]], device=self.device), q, first_slot=slot)[0])
        ids = torch.cat(tokens)[None]
        n = ids.shape[1]
        past_len = self._width + shared * step
        allowed = torch.zeros(n, past_len + n, dtype=torch.bool)
        allowed[:, : self._width] = self._prompt_mask[query].bool().cpu()
        allowed[:, self._width : past_len] = True
        allowed[:n_chain, past_len : past_len + n_chain] = torch.tril(torch.ones(n_chain, n_chain, dtype=torch.bool))
        start = {p: n_chain + i * step for i, p in enumerate(paths)}
        positions = list(range(shared * step, shared * step + n_chain))
        for path, slot in zip(paths, slots, strict=True):
            at = start[path]
            allowed[at : at + step, past_len : past_len + n_chain] = True
            for depth in range(1, len(path)):
                ancestor = start[path[:depth]]
                allowed[at : at + step, past_len + ancestor : past_len + ancestor + step] = True
            allowed[at : at + step, past_len + at : past_len + at + step] = torch.tril(
                torch.ones(step, step, dtype=torch.bool)
            )
            positions += range(slot * step, slot * step + step)
        mask = additive_mask(allowed, self.target.model.dtype)[None, None].to(self.device)
        position_ids = self._lengths[query] + torch.tensor([positions], device=self.device)
        keep = torch.tensor(
            [*range(step - 1, n_chain, step), *(start[p] + step - 1 for p in paths)], device=self.device
        )
        logits, cache, hidden = self._forward(ids, self._past(q, shared), mask, position_ids, keep, queries=[query])
        rows = self._rows(logits, q)[0, :, :k]  # chain slots' rows, then each node's
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
        # The cache: prompt + the shared slots + the fed chain, then the accepted nodes' tokens.
        kv = self._kv_of(cache, past_len + n)
        columns = torch.cat(
            [torch.arange(past_len + n_chain)]
            + [
                torch.arange(past_len + start[accepted[:d]], past_len + start[accepted[:d]] + step)
                for d in range(1, len(accepted) + 1)
            ]
        ).to(self.device)
        items = prefix + list(accepted)
        self._cached_items[query] = tuple(items)
        self._cached_kv[query] = [(k_.index_select(2, columns), v_.index_select(2, columns)) for k_, v_ in kv]
        self._cached_rows[query] = torch.cat(
            [
                self._cached_rows[query][: shared + 1],
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

    def _verification_pass(
        self, rs: dict[int, torch.Tensor], shared: dict[int, list[int]], needing: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, Callable[[int], KV]]]:
        """One forward for every ranking of the ``needing`` queries, all fed from the smallest shared prefix."""
        start_slot = min(min(shared[q]) for q in needing)
        queries = torch.cat([torch.full((rs[q].shape[0],), q, device=self.device) for q in needing])
        rankings = [rs[q] for q in needing]
        k_max = max(self.ks[q] for q in needing)
        # Each query's slots start_slot..K_q-2, padded to the longest (padding is masked out below).
        items = torch.cat(
            [torch.nn.functional.pad(r[:, start_slot : r.shape[1] - 1], (0, k_max - r.shape[1])) for r in rankings]
        )
        tokens = self._slot_tokens(items, queries, first_slot=start_slot)  # [R, n_slots*step]
        real = torch.cat(
            [
                torch.full((r.shape[0],), (self.ks[q] - 1 - start_slot) * self._step, device=self.device)
                for q, r in zip(needing, rankings, strict=True)
            ]
        )
        fed = torch.arange(tokens.shape[1], device=self.device)[None, :] < real[:, None]
        tokens = tokens.masked_fill(~fed, self._pad_id)
        positions = (
            self._lengths[queries][:, None]
            + start_slot * self._step
            + torch.arange(tokens.shape[1], device=self.device)[None, :]
        )
        keep = torch.arange(self._step - 1, tokens.shape[1], self._step)
        logits, cache, _ = self._forward(
            tokens,
            self._past(queries, start_slot),
            self._mask(queries, start_slot, fed, self._left_padded or len({self.ks[q] for q in needing}) > 1),
            positions,
            keep,
            queries=needing,
        )
        rows = self._rows(logits, queries)  # [R, n_slots, K_max]
        full_len = self._width + start_slot * self._step + tokens.shape[1]
        kv = self._kv_of(cache, full_len)
        new_rows, new_kv, at = {}, {}, 0
        for q, r in zip(needing, rankings, strict=True):
            b, k = r.shape[0], self.ks[q]
            held = self._cached_rows[q][: start_slot + 1]  # rows of slots 0..start_slot: unchanged by the pass
            fresh = rows[at : at + b, : k - 1 - start_slot, :k]
            new_rows[q] = torch.cat([held.expand(b, -1, -1), fresh], dim=1)
            length = self._width + (k - 1) * self._step
            new_kv[q] = functools.partial(_copied_row, [(k_[:, :, :length], v_[:, :, :length]) for k_, v_ in kv], at)
            at += b
        return new_rows, new_kv

    def _stepwise(self, queries: list[int], forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode slot by slot on a growing KV cache, all ``queries`` together, one forward per slot.

        With ``forced`` [A, K_max] the items are teacher-forced; without, each slot takes the greedy
        item among those not yet placed. A query leaves the batch once its K-1 slots are decoded.
        Returns the rankings [A, K_max] and their rows [A, K_max, K_max] (padded past each K).
        """
        if self._tree:
            return self._tree_stepwise(queries, forced)
        qs = torch.tensor(queries, device=self.device)
        ks = [self.ks[q] for q in queries]
        k_max = max(ks)
        a = len(queries)
        arange = torch.arange(k_max, device=self.device)
        placed = arange[None, :] >= self._k[qs][:, None]  # padded items count as placed: never chosen
        chosen = torch.zeros(a, k_max, dtype=torch.long, device=self.device)
        rows = torch.full((a, k_max, k_max), float("-inf"), device=self.device)
        rows[:, 0] = self._row0[qs, :k_max]
        active_list = list(range(a))  # the queries (indices into ``queries``) still decoding
        active = torch.arange(a, device=self.device)
        kv = self._past(qs, 0)
        for slot in range(k_max - 1):
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
            tokens = self._slot_tokens(item[:, None], qs[active], first_slot=slot)
            fed = torch.ones_like(tokens, dtype=torch.bool)
            positions = (
                self._lengths[qs[active]][:, None] + slot * self._step + torch.arange(self._step, device=self.device)
            )
            logits, cache, _ = self._forward(
                tokens,
                kv,
                self._mask(qs[active], slot, fed, self._left_padded),
                positions,
                keep=1,
                queries=[queries[i] for i in active_list],
            )
            kv = self._kv_of(cache, self._width + (slot + 1) * self._step)
            rows[active, slot + 1] = self._rows(logits[:, -1], qs[active])
        # The last slot takes the one item left.
        for i, k in enumerate(ks):
            if forced is None:
                chosen[i, k - 1] = (~placed[i, :k]).float().argmax()
            else:
                chosen[i, k - 1] = forced[i, k - 1]
        return chosen, rows

    # -- multi-token identifiers: tree-masked passes -------------------------------------------------
    # KV here is kept per query without padding ([1, H, L, D], prompt + ranking tokens), because chunks
    # differ in length between items; a pass left-pads the pasts and masks everything explicitly.

    def _prompt_past(self, q: int) -> KV:
        """[1, H, n_q, D] per layer: query ``q``'s prompt KV without its left padding (views)."""
        start = self._width - self.prompt_lengths[q]
        return [(k_[q : q + 1, :, start:], v_[q : q + 1, :, start:]) for k_, v_ in self._prompt_kv]

    def _chunk(self, q: int, slot: int, item: int) -> list[int]:
        """Tokens of ``item`` at ``slot`` of query ``q``'s ranking, with the separator after it."""
        return list(self.prompts[q].layout.piece(slot, item)) + list(self._sep_tokens)

    def _tree_offset(self, q: int, items: Sequence[int], slots: int) -> int:
        """Tokens after the prompt taken by the first ``slots`` chunks of ``items``."""
        return sum(len(self._chunk(q, j, items[j])) for j in range(slots))

    def _tree_pass(
        self,
        pasts: list[KV],
        paths: list[list[int]],
        reads: list[list[Read]],
        queries: list[int] | None,
        root_logits: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[list[torch.Tensor]], Callable[[int], KV]]:
        """One forward of B sequences, each its past KV, its own tokens ``paths[b]`` and its reads' branch tokens.

        Returns each sequence's rows (one [K_q] log-distribution per read) and a function from a
        sequence to the KV of its past and its own tokens (a copy). ``root_logits[b]``: the logits of
        the last past token, for reads at root -1 (``queries`` None: the prompts' own, not counted).
        """
        lengths = [past[0][0].shape[2] for past in pasts]
        block = Block.of(paths, reads, lengths, self._pad_id, self.device)
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
        mask = block.additive_mask(self.target.model.dtype)
        logits, cache, _ = self._forward(block.input_ids, layers, mask, block.positions, keep=0, queries=queries)
        kv = self._kv_of(cache, lmax + block.input_ids.shape[1])
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

    def _tree_row0(self, prompt_logits: list[torch.Tensor]) -> torch.Tensor:
        """[Q, K_max] first-slot rows: every item's whole piece scored after each prompt (one forward, uncounted)."""
        queries = range(len(self.prompts))
        reads = [[Read(-1, self._tries[q][0])] for q in queries]
        rows, _ = self._tree_pass(
            [self._prompt_past(q) for q in queries], [[] for _ in queries], reads, None, prompt_logits
        )
        out = torch.full((len(self.prompts), max(self.ks)), float("-inf"), device=self.device)
        for q in queries:
            out[q, : self.ks[q]] = rows[q][0]
        return out

    def _tree_verification_pass(
        self, rs: dict[int, torch.Tensor], shared: dict[int, list[int]], needing: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, Callable[[int], KV]]]:
        """``_verification_pass`` for multi-token identifiers: each query fed from its own smallest shared prefix."""
        pasts, paths, reads = [], [], []
        for q in needing:
            k, start = self.ks[q], min(shared[q])
            length = self.prompt_lengths[q] + self._tree_offset(q, self._cached_items[q], start)
            base = self._cached_kv[q] or self._prompt_past(q)
            past = [(k_[:, :, :length], v_[:, :, :length]) for k_, v_ in base]
            for ranking in rs[q].tolist():
                path: list[int] = []
                own: list[Read] = []
                for slot in range(start, k - 1):
                    path += self._chunk(q, slot, ranking[slot])
                    own.append(Read(len(path) - 1, self._tries[q][1]))
                pasts.append(past)
                paths.append(path)
                reads.append(own)
        rows, kept = self._tree_pass(pasts, paths, reads, needing)
        new_rows, new_kv, at = {}, {}, 0
        for q in needing:
            b, start = rs[q].shape[0], min(shared[q])
            held = self._cached_rows[q][: start + 1]  # rows of slots 0..start: unchanged by the pass
            fresh = torch.stack([torch.stack(rows[at + i]) for i in range(b)])  # [B, K-1-start, K]
            new_rows[q] = torch.cat([held.expand(b, -1, -1), fresh], dim=1)
            new_kv[q] = lambda best, offset=at: kept(offset + best)
            at += b
        return new_rows, new_kv

    def _tree_stepwise(self, queries: list[int], forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_stepwise`` for multi-token identifiers: each step feeds the chosen chunk and the next slot's branches."""
        ks = [self.ks[q] for q in queries]
        k_max = max(ks)
        qs = torch.tensor(queries, device=self.device)
        placed = torch.arange(k_max, device=self.device)[None, :] >= self._k[qs][:, None]
        chosen = torch.zeros(len(queries), k_max, dtype=torch.long, device=self.device)
        rows = torch.full((len(queries), k_max, k_max), float("-inf"), device=self.device)
        rows[:, 0] = self._row0[qs, :k_max]
        pasts = [self._prompt_past(q) for q in queries]
        for slot in range(k_max - 1):
            active = [i for i, k in enumerate(ks) if k - 1 > slot]
            at = torch.tensor(active, device=self.device)
            if forced is None:
                items = rows[at, slot].masked_fill(placed[at], float("-inf")).argmax(dim=-1)
            else:
                items = forced[at, slot]
            chosen[at, slot] = items
            placed[at, items] = True
            paths = [self._chunk(queries[i], slot, item) for i, item in zip(active, items.tolist(), strict=True)]
            reads = [[Read(len(path) - 1, self._tries[queries[i]][1])] for i, path in zip(active, paths, strict=True)]
            out, kept = self._tree_pass([pasts[i] for i in active], paths, reads, [queries[i] for i in active])
            for j, i in enumerate(active):
                rows[i, slot + 1, : ks[i]] = out[j][0]
                pasts[i] = kept(j)
        for i, k in enumerate(ks):
            chosen[i, k - 1] = (~placed[i, :k]).float().argmax() if forced is None else forced[i, k - 1]
        return chosen, rows

    def stepwise_rows(self, ranking: Sequence[int] | None = None, query: int = 0) -> tuple[list[int], torch.Tensor]:
        """Decode slot by slot on a growing KV cache, one forward per slot (K-1 in all).

        With ``ranking`` the items are teacher-forced; without, each slot takes the greedy item
        among those not yet placed. Returns the ranking and its [K, K] rows: the reference that
        ``verify`` must reproduce in one pass.
        """
        k = self.ks[query]
        forced = None if ranking is None else self._as_rankings(ranking, k)
        chosen, rows = self._stepwise([query], forced)
        return chosen[0, :k].tolist(), rows[0, :k, :k]

    def greedy_rankings(self, queries: Sequence[int] | None = None) -> dict[int, list[int]]:
        """The exact targets σ_tr of ``queries`` (default all), decoded together: K-1 incremental steps, memoised."""
        queries = list(range(len(self.prompts))) if queries is None else list(queries)
        todo = [q for q in queries if q not in self._greedy]
        if todo:
            chosen, _ = self._stepwise(todo, None)
            for i, q in enumerate(todo):
                self._greedy[q] = chosen[i, : self.ks[q]].tolist()
        return {q: list(self._greedy[q]) for q in queries}

    def greedy_ranking(self, query: int = 0) -> list[int]:
        """The exact target σ_tr: constrained greedy autoregressive ranking (K-1 incremental decode steps, memoised)."""
        return self.greedy_rankings([query])[query]

    @torch.inference_mode()
    def generate_many(
        self, queries: Sequence[int] | None = None, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> dict[int, Generation]:
        """RankZephyr-style free greedy generation from the chat prompts (without the forced ``head``), batched.

        Generation runs its own prefill, as a RankLLM user's would; by default it may write the
        longest ranking string plus 8 tokens (``min_new_tokens`` forces a length, for timing). Its
        steps are not verification passes and are not added to ``passes``.
        """
        queries = list(range(len(self.prompts))) if queries is None else list(queries)
        tokenizer = self.target.tokenizer
        prompts = [
            self.prompts[q].token_ids[: len(self.prompts[q].token_ids) - len(self.prompts[q].layout.head)]
            for q in queries
        ]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        if max_new_tokens is None:
            # The layout's tokens are the tokenizer's own encoding of the ranking string (checked when made).
            max_new_tokens = 8 + max(len(self.prompts[q].layout.tokens(range(self.ks[q]))) for q in queries)
        start = self.clock()
        try:
            out = self.target.model.generate(
                ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=False,
                pad_token_id=self._pad_id,
            )
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"out of memory on {self.device} generating for {len(prompts)} prompts; lower --batch-size"
            ) from err
        seconds = self.clock() - start
        result = {}
        eos = tokenizer.eos_token_id
        for i, q in enumerate(queries):
            new = out[i, width:].tolist()
            if eos in new and min_new_tokens == 0:
                new = new[: new.index(eos) + 1]
            result[q] = Generation(tokenizer.decode(new, skip_special_tokens=True), len(new), seconds)
        return result

    def generate(self, max_new_tokens: int | None = None, min_new_tokens: int = 0, query: int = 0) -> Generation:
        """Free generation for one query (``generate_many`` for one)."""
        return self.generate_many([query], max_new_tokens, min_new_tokens)[query]
