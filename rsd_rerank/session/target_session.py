"""``TargetSession``: one target LLM primed with Q prompts, and everything decoding asks of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rsd_rerank.prompt import Prompt, PromptConfig, build_prompt, request_prompts, warn_context_cuts
from rsd_rerank.session.forward import Forward
from rsd_rerank.session.generation import Generation, generate
from rsd_rerank.session.heads import Expansion, expand
from rsd_rerank.session.invariant import fixed_point, verify_whole
from rsd_rerank.session.kv import Held, PromptKV
from rsd_rerank.session.passes import Passes
from rsd_rerank.session.single import SingleTokenPasses
from rsd_rerank.session.trie import TriePasses
from rsd_rerank.session.verification import (
    Verification,
    accepted_length,
    as_rankings,
    greedy_choices,
    shared_prefix,
    verified_rows,
)
from rsd_rerank.targets import Target

__all__ = ["TargetSession"]


class TargetSession:
    """A target LLM primed with Q queries and their candidates (Q = 1 for the plain constructor).

    Builds RankLLM's prompts, checks the identifier tokenisation, prefills the prompts once and keeps
    their KV caches. ``first_slot(q)`` is single-token decoding (FIRST); ``verify`` / ``verify_many``
    score whole rankings in one forward; ``greedy_ranking(q)`` / ``greedy_rankings()`` are the exact
    target, the constrained greedy autoregressive ranking with separators forced; ``expand`` is the
    head baselines' tree pass; ``generate`` / ``generate_many`` are free generation. Methods that
    take a query index default to query 0, the only one of a single-query session.

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
    def from_prompts(cls, target: Target, prompts: Sequence[Prompt], invariant: bool = False) -> TargetSession:
        """A session on Q ready prompts, prefilled together (their K and lengths may differ).

        ``invariant``: batch-invariant passes (``BatchConfig.batch_invariant``): every verification feeds each
        ranking whole, alone, in a forward of one shape per query, and the greedy target is the fixed
        point of such passes. Each slot's row is then a function of the items before it alone, bit for
        bit, so rankings do not depend on the batch and Theorem 1 holds in any precision.
        """
        if not prompts:
            raise ValueError("a session needs at least one prompt")
        session = cls.__new__(cls)
        session._prefill(target, list(prompts), invariant)
        return session

    def _prefill(self, target: Target, prompts: list[Prompt], invariant: bool = False) -> None:
        self.invariant = invariant
        self.target = target
        self.prompts = prompts
        self.ks = [p.layout.k for p in prompts]
        self.device = target.model.device
        tokenizer = target.tokenizer
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._forward = Forward(target.model, len(prompts))
        self._prompt_kv = PromptKV(self._forward, prompts)
        self._held = Held()
        layouts = [p.layout for p in prompts]
        # Multi-token identifiers take the trie passes; single tokens the fixed-stride ones.
        kind = SingleTokenPasses if all(layout.single_token for layout in layouts) else TriePasses
        self._passes: Passes = kind(self._forward, self._prompt_kv, self._held, layouts, self._pad_id)
        start = self._forward.clock()
        self._row0 = self._passes.row0()  # [Q, K_max]
        self.prefill_seconds = self._prompt_kv.seconds + self._forward.clock() - start
        """Seconds of the prompts' prefill (for Q > 1: the whole batch's)."""
        self.prompt_lengths = self._prompt_kv.lengths
        """Tokens of each prompt."""
        self._greedy: dict[int, list[int]] = {}  # the targets decoded so far (``greedy_rankings``)
        self.drafts: dict = {}
        """A memo that methods keep on the session, so that it lives as long as these prompts: a
        drafter's first-slot scores of them (``methods``: sdm, first-sd and the fine-tunes)."""
        self.forget()

    def forget(self, greedy: bool = False) -> None:
        """Drop the KV and rows of every query's last verified ranking (the prompts' stay), so that the
        next decoding run costs what it would cost alone (timing comparisons between methods);
        ``greedy``: also the memoised greedy targets, so that the next ``greedy_rankings`` decodes again."""
        self._held.reset(self._row0, self.ks)
        if greedy:
            self._greedy.clear()

    # -- counters and clock, read by the decoding trace ---------------------------------------------

    @property
    def passes(self) -> int:
        """Forwards after the prompts so far: verifications, decode steps of the greedy target."""
        return self._forward.passes

    @property
    def query_passes(self) -> list[int]:
        """Per query: the forwards after the prompts that it took part in."""
        return self._forward.query_passes

    @property
    def fed_tokens(self) -> list[int]:
        """Tokens per sequence that each of those forwards fed (the verified-prefix reuse shows here)."""
        return self._forward.fed_tokens

    @property
    def fed_sequences(self) -> list[int]:
        """Sequences in each of those forwards (queries that are done have left the batch)."""
        return self._forward.fed_sequences

    def tokens_fed(self, since: int = 0) -> int:
        """Tokens fed by the forwards after the first ``since``, every sequence counted (a pass that
        verifies three drafts side by side feeds three rankings' tokens)."""
        widths, sequences = self.fed_tokens[since:], self.fed_sequences[since:]
        return sum(w * n for w, n in zip(widths, sequences, strict=True))

    @property
    def forward_seconds(self) -> float:
        """Seconds spent in those forwards."""
        return self._forward.forward_seconds

    def clock(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work (CUDA runs asynchronously)."""
        return self._forward.clock()

    # -- single-query conveniences ------------------------------------------------------------------

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

    @property
    def _step(self) -> int:
        """Tokens per slot after the prompt (identifier + separator) for single-token identifiers."""
        return self._passes.step

    # -- verification -------------------------------------------------------------------------------

    def first_slot(self, query: int = 0) -> torch.Tensor:
        """[K] log-probabilities of the first identifier right after the prompt (single-token decoding)."""
        return self._row0[query, : self.ks[query]].clone()

    def first_hidden(self, query: int = 0) -> torch.Tensor:
        """[H] the last hidden state after the prompt, where the first slot's row is read."""
        return self._prompt_kv.hidden[query].clone()

    def verify(self, rankings: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor, query: int = 0) -> Verification:
        """Teacher-force one ranking [K] or a batch [B, K] of one query after its cached prompt: one forward in all.

        Only the tail after the prefix shared with the query's last verified ranking is fed; the
        rows and KV of that prefix are reused.
        """
        return self.verify_many({query: rankings})[query]

    def verify_many(self, rankings: Mapping[int, Sequence[Sequence[int]] | torch.Tensor]) -> dict[int, Verification]:
        """Verify the rankings [B_q, K_q] of several queries in one forward (none where every ranking's
        first K-1 items are already the query's verified ones).

        Rows of a ranking's slots up to its own shared prefix are the held rows of the verified ranking
        (they condition on the same items), so the verified prefix and the bonus item are accepted again
        in any precision: Theorem 1 holds by construction, in bf16 as in fp32. The best ranking (largest
        i*) becomes the query's held one.
        """
        held_state = self._held
        rs = {q: as_rankings(r, self.ks[q], self.device) for q, r in rankings.items()}
        if self.invariant:
            return verify_whole(self._passes, self._held, rs)
        shared = {
            q: [min(shared_prefix(row, held_state.items[q]), self.ks[q] - 1) for row in r.tolist()]
            for q, r in rs.items()
        }
        # Slot K-1's row only needs the separator after slot K-2; identifier K-1 is never fed.
        needing = [q for q in rs if min(shared[q]) < self.ks[q] - 1]
        new_rows: dict[int, torch.Tensor] = {}
        new_kv: dict[int, Any] = {}
        if needing:
            new_rows, new_kv = self._passes.verification_pass(rs, shared, needing)
        out = {}
        for q, r in rs.items():
            k = self.ks[q]
            matrices = verified_rows(held_state.rows[q], new_rows.get(q), shared[q], k)
            greedy = greedy_choices(r, matrices)
            accepted = accepted_length(r, greedy)
            best = int(accepted.argmax())
            if q in new_kv:
                held_state.kv[q] = new_kv[q](best)
                held_state.items[q] = tuple(r[best, : k - 1].tolist())
                held_state.rows[q] = matrices[best]
            out[q] = Verification(rankings=r, matrices=matrices, greedy=greedy, accepted=accepted)
        return out

    def expand(self, prefix: Sequence[int], paths: Sequence[Sequence[int]], query: int = 0) -> Expansion:
        """The head baselines' tree pass (``rsd_rerank.session.heads.expand``); single-token identifiers."""
        if not isinstance(self._passes, SingleTokenPasses):
            raise ValueError("tree verification of rankings needs single-token identifiers (a letters template)")
        if self.invariant:
            raise ValueError("a tree pass has no batch-invariant form: batch-invariant sessions verify whole rankings")
        return expand(self._passes, prefix, paths, query)

    def identifier_unembedding(self, query: int = 0) -> torch.Tensor:
        """[K, H] the LM head's rows of the query's later-slot identifier tokens (what prediction heads
        score items with); single-token identifiers only."""
        if not isinstance(self._passes, SingleTokenPasses):
            raise ValueError("prediction heads need single-token identifiers; this template's are several tokens")
        return self._passes.identifier_unembedding(query)

    # -- the exact target ---------------------------------------------------------------------------

    def stepwise_rows(self, ranking: Sequence[int] | None = None, query: int = 0) -> tuple[list[int], torch.Tensor]:
        """Decode slot by slot on a growing KV cache, one forward per slot (K-1 in all).

        With ``ranking`` the items are teacher-forced; without, each slot takes the greedy item
        among those not yet placed. Returns the ranking and its [K, K] rows: the reference that
        ``verify`` must reproduce in one pass.
        """
        k = self.ks[query]
        forced = None if ranking is None else as_rankings(ranking, k, self.device)
        chosen, rows = self._passes.stepwise([query], forced, self._row0)
        return chosen[0, :k].tolist(), rows[0, :k, :k]

    def greedy_rankings(self, queries: Sequence[int] | None = None) -> dict[int, list[int]]:
        """The exact targets σ_tr of ``queries`` (default all), decoded together: K-1 incremental steps,
        memoised for the session's life (``forget(greedy=True)`` drops them)."""
        queries = list(range(len(self.prompts))) if queries is None else list(queries)
        todo = [q for q in queries if q not in self._greedy]
        if todo and self.invariant:
            for q in todo:
                self._greedy[q] = fixed_point(self._passes, q)
        elif todo:
            chosen, _ = self._passes.stepwise(todo, None, self._row0)
            for i, q in enumerate(todo):
                self._greedy[q] = chosen[i, : self.ks[q]].tolist()
        return {q: list(self._greedy[q]) for q in queries}

    def greedy_ranking(self, query: int = 0) -> list[int]:
        """The exact target σ_tr: constrained greedy autoregressive ranking (K-1 incremental decode steps, memoised)."""
        return self.greedy_rankings([query])[query]

    # -- free generation ----------------------------------------------------------------------------

    def generate_many(
        self, queries: Sequence[int] | None = None, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> dict[int, Generation]:
        """RankZephyr-style free greedy generation from the chat prompts (without the forced ``head``), batched.

        Generation runs its own prefill, as a RankLLM user's would; by default it may write the
        longest ranking string plus 8 tokens (``min_new_tokens`` forces a length, for timing). Its
        steps are not verification passes and are not added to ``passes``.
        """
        queries = list(range(len(self.prompts))) if queries is None else list(queries)
        if max_new_tokens is None:
            # The layout's tokens are the tokenizer's own encoding of the ranking string (checked when made).
            max_new_tokens = 8 + max(len(self.prompts[q].layout.tokens(range(self.ks[q]))) for q in queries)
        prompts = [self.prompts[q] for q in queries]
        made = generate(self._forward, self.target.tokenizer, prompts, self._pad_id, max_new_tokens, min_new_tokens)
        return dict(zip(queries, made, strict=True))

    def generate(self, max_new_tokens: int | None = None, min_new_tokens: int = 0, query: int = 0) -> Generation:
        """Free generation for one query (``generate_many`` for one)."""
        return self.generate_many([query], max_new_tokens, min_new_tokens)[query]
