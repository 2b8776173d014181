"""RankLLM drop-in: ``Reranker(RSDReranker(...)).rerank_batch(requests, rank_end=100)``.

RankLLM keeps doing what it does: sliding windows (window 20, stride 10 by default), permutation
repair (``receive_permutation``), ``Result``/``InferenceInvocation`` bookkeeping and ``DataWriter``
output. ``rerank_batch`` walks the windows of every request in lockstep, RankLLM's order within each
request (a request's windows stay sequential, each depends on the last), and decodes the i-th window
of up to ``batch_size`` requests in one batched session. Each window's prompt is RankLLM's own template rendering; instead of free generation the
window is decoded by the core engine (``rsd``, ``greedy``, ``std``, ``gsd``, ``consensus``) and written back
as the ranking string ``[B] > [A] > …`` that RankLLM parses.
"""

from __future__ import annotations

import copy
from typing import Any

from rank_llm.data import Request, Result
from rank_llm.rerank.listwise.listwise_rankllm import ListwiseRankLLM

from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.prompt import (
    DEFAULT_TEMPLATE,
    IDENTIFIERS,
    PromptConfig,
    build_prompt,
    chat_ids,
    check_candidates,
    prompt_from_messages,
    ranking_text,
    template_path,
)
from rsd_rerank.runs import BatchConfig, batched_sessions
from rsd_rerank.targets import Target, load_target

__all__ = ["RSDReranker"]


class RSDReranker(ListwiseRankLLM):
    """A RankLLM listwise reranker that decodes each window with up-to-down speculative decoding.

    Args:
        model: as ``rsd_rerank.targets.load_target``: ``None`` (embedded SmolLM2), a name, a local
            directory, a loaded model (with ``tokenizer``) or a ``Target``.
        tokenizer: the tokenizer of a loaded ``model``.
        prompt_template_path: a RankLLM ``singleturn_listwise`` template with alphabetical
            identifiers (name of a bundled one, or a path).
        method: ``rsd`` (the learned agent), ``greedy`` (the LLM's own ranking), ``std``, ``gsd`` or
            ``consensus``.
        budget: LLM verification passes per window.
        agent: for ``rsd``, an agent checkpoint directory or bundled name; None picks the bundled
            agent trained on the model (``RSDReranker()`` uses the embedded SmolLM2's).
        window_size, stride, context_size, max_passage_words: as in RankLLM.
        device, dtype: where and in what precision a model loaded by name runs (``load_target``).
        batch_size, max_batch_tokens: windows decoded together (``rsd_rerank.runs.BatchConfig``).

    Every window's passes, i* per round and seconds are recorded in the invocation's
    ``token_usage``. After reranking, candidate scores are set to ``n, n-1, …, 1`` (rank order), so
    a TREC run written from the results has strictly decreasing scores even where first-stage
    scores tie.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        prompt_template_path: str = DEFAULT_TEMPLATE,
        method: str = DecodingConfig.method,
        budget: int = DecodingConfig.budget,
        agent: str | None = None,
        window_size: int = 20,
        stride: int = 10,
        context_size: int = PromptConfig.context_size,
        max_passage_words: int = PromptConfig.max_passage_words,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = BatchConfig.batch_size,
        max_batch_tokens: int | None = BatchConfig.max_batch_tokens,
    ) -> None:
        if not 1 <= window_size <= len(IDENTIFIERS):
            raise ValueError(f"window_size must be 1..{len(IDENTIFIERS)} (identifiers [A]..[Z]), got {window_size}")
        self._target: Target = load_target(model, tokenizer, device=device, dtype=dtype)
        self._decoding = DecodingConfig(method, budget, agent)
        self._batching = BatchConfig(batch_size, max_batch_tokens)
        template = str(template_path(prompt_template_path))
        self._prompt_config = PromptConfig(template, max_passage_words, context_size)
        super().__init__(
            model=self._target.name,
            context_size=context_size,
            prompt_template_path=template,
            window_size=window_size,
            stride=stride,
            use_alpha=True,
            batch_size=batch_size,
            max_passage_words=max_passage_words,
        )

    # -- prompts ---------------------------------------------------------------------------------

    def create_prompt(self, result: Result, rank_start: int, rank_end: int) -> tuple[list[dict[str, str]], int]:
        """RankLLM's chat messages for the window, fitted to the context; and their token count."""
        window = result.candidates[rank_start:rank_end]
        check_candidates([c.docid for c in window])
        prompt = build_prompt(
            self._target.tokenizer,
            result.query.text,
            [c.doc for c in window],
            self._prompt_config,
            self._target.max_positions,
        )
        return prompt.messages, len(prompt.token_ids)

    def create_prompt_batched(
        self, results: list[Result], rank_start: int, rank_end: int
    ) -> list[tuple[list[dict[str, str]], int]]:
        return [self.create_prompt(r, rank_start, rank_end) for r in results]

    def get_num_tokens(self, prompt: str | list[dict[str, str]]) -> int:
        if isinstance(prompt, str):
            return len(self._target.tokenizer.encode(prompt))
        return len(chat_ids(self._target.tokenizer, prompt))

    def num_output_tokens(self, current_window_size: int | None = None) -> int:
        k = current_window_size or self._window_size
        return len(self._target.tokenizer.encode(ranking_text(range(k)), add_special_tokens=False))

    def cost_per_1k_token(self, input_token: bool) -> float:
        return 0.0

    # -- decoding --------------------------------------------------------------------------------

    def run_llm(
        self, prompt: list[dict[str, str]], current_window_size: int | None = None, **kwargs: Any
    ) -> tuple[str, None, dict[str, Any]]:
        """Decode one window; returns (ranking string, no reasoning, usage with the decoding trace)."""
        return self.run_llm_batched([prompt], current_window_size)[0]

    def run_llm_batched(
        self, prompts: list[list[dict[str, str]]], current_window_size: int | None = None, **kwargs: Any
    ) -> list[tuple[str, None, dict[str, Any]]]:
        """Decode windows of one size, ``batch_size`` at a time in one session each."""
        k = current_window_size or self._window_size
        return self._decode_windows(prompts, [k] * len(prompts))

    def _decode_windows(
        self, prompts: list[list[dict[str, str]]], ks: list[int]
    ) -> list[tuple[str, None, dict[str, Any]]]:
        """Decode windows (chat messages listing ``ks[i]`` candidates), batched; RankLLM's output tuples."""
        tokenized = [prompt_from_messages(self._target.tokenizer, p, k) for p, k in zip(prompts, ks, strict=True)]
        out: list[tuple[str, None, dict[str, Any]]] = []
        for group, session in batched_sessions(self._target, tokenized, self._batching):
            decoded = rank_many(session, self._decoding)
            for q, i in enumerate(group):
                trace = decoded[q].trace
                usage = {
                    "prompt_tokens": session.prompt_lengths[q],
                    "completion_tokens": self.num_output_tokens(ks[i]),
                    "method": self._decoding.method,
                    "budget": self._decoding.budget,
                    "passes": trace.passes,
                    "accepted": trace.accepted_of(),
                    "prefill_seconds": trace.prefill_seconds,
                    "decode_seconds": trace.decode_seconds,
                    "batch": len(group),
                }
                out.append((ranking_text(decoded[q].ranking), None, usage))
        return out

    def rerank_batch(
        self,
        requests: list[Request],
        rank_start: int = 0,
        rank_end: int = 100,
        shuffle_candidates: bool = False,
        logging: bool = False,
        **kwargs: Any,
    ) -> list[Result]:
        """RankLLM's sliding windows over every request, the i-th windows of all requests decoded together;
        scores rewritten to rank order."""
        top_k_retrieve: int = kwargs.get("top_k_retrieve", rank_end)
        populate = kwargs.get("populate_invocations_history", True)
        for request in requests:
            check_candidates([c.docid for c in request.candidates], one_prompt=False)
        results = [
            Result(query=copy.deepcopy(r.query), candidates=copy.deepcopy(r.candidates), invocations_history=[])
            for r in requests
        ]
        if shuffle_candidates:
            self.shuffle_and_rescore(results, rank_start, rank_end)
        window_size = min(self._window_size, top_k_retrieve)
        first = max(rank_start, 0)
        # Each request's next window, exactly as RankLLM's sliding_windows walks it: from the bottom up.
        windows: dict[int, tuple[int, int]] = {}
        for i, result in enumerate(results):
            end = min(rank_end, top_k_retrieve, len(result.candidates))
            if end > max(end - window_size, first):
                windows[i] = (max(end - window_size, first), end)
        while windows:
            order = list(windows)
            prompts = [self.create_prompt(results[i], *windows[i]) for i in order]
            outputs = self._decode_windows([p for p, _ in prompts], [windows[i][1] - windows[i][0] for i in order])
            for i, (prompt, in_tokens), llm_out in zip(order, prompts, outputs, strict=True):
                start, end = windows.pop(i)
                results[i] = self._apply_llm_output_to_result(
                    results[i], llm_out, prompt, in_tokens, start, end, logging, populate
                )
                if start != first:  # once the first candidate is in a window, further windows are redundant
                    end -= self._stride
                    start = max(start - self._stride, first)
                    if end > start:
                        windows[i] = (start, end)
        for result in results:
            n = len(result.candidates)
            result.candidates = [copy.copy(c) for c in result.candidates]
            for i, candidate in enumerate(result.candidates):
                candidate.score = float(n - i)
        return results
