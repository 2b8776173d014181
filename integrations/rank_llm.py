"""RankLLM drop-in: ``Reranker(RSDReranker(...)).rerank_batch(requests, rank_end=100)``.

RankLLM keeps doing what it does: sliding windows (window 20, stride 10 by default), permutation
repair (``receive_permutation``), ``Result``/``InferenceInvocation`` bookkeeping and ``DataWriter``
output. Each window's prompt is RankLLM's own template rendering; instead of free generation the
window is decoded by the core engine (``rsd``, ``greedy``, ``std``, ``gsd``, ``consensus``) and written back
as the ranking string ``[B] > [A] > …`` that RankLLM parses.
"""

from __future__ import annotations

import copy
from typing import Any

from rank_llm.data import Request, Result
from rank_llm.rerank.listwise.listwise_rankllm import ListwiseRankLLM

from rsd_rerank.methods import DecodingConfig, rank
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
from rsd_rerank.session import TargetSession
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
    ) -> None:
        if not 1 <= window_size <= len(IDENTIFIERS):
            raise ValueError(f"window_size must be 1..{len(IDENTIFIERS)} (identifiers [A]..[Z]), got {window_size}")
        self._target: Target = load_target(model, tokenizer)
        self._decoding = DecodingConfig(method, budget, agent)
        template = str(template_path(prompt_template_path))
        self._prompt_config = PromptConfig(template, max_passage_words, context_size)
        super().__init__(
            model=self._target.name,
            context_size=context_size,
            prompt_template_path=template,
            window_size=window_size,
            stride=stride,
            use_alpha=True,
            batch_size=1,  # one window at a time: the session owns the model's forward
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
        k = current_window_size or self._window_size
        session = TargetSession.from_prompt(self._target, prompt_from_messages(self._target.tokenizer, prompt, k))
        decoded = rank(session, self._decoding)
        text = ranking_text(decoded.ranking)
        trace = decoded.trace
        usage = {
            "prompt_tokens": session.prompt_tokens,
            "completion_tokens": self.num_output_tokens(k),
            "method": self._decoding.method,
            "budget": self._decoding.budget,
            "passes": trace.passes,
            "accepted": trace.accepted_of(),
            "prefill_seconds": trace.prefill_seconds,
            "decode_seconds": trace.decode_seconds,
        }
        return text, None, usage

    def run_llm_batched(
        self, prompts: list[list[dict[str, str]]], current_window_size: int | None = None, **kwargs: Any
    ) -> list[tuple[str, None, dict[str, Any]]]:
        return [self.run_llm(p, current_window_size) for p in prompts]

    def rerank_batch(
        self,
        requests: list[Request],
        rank_start: int = 0,
        rank_end: int = 100,
        shuffle_candidates: bool = False,
        logging: bool = False,
        **kwargs: Any,
    ) -> list[Result]:
        """RankLLM's sliding windows over each request, one window at a time; scores rewritten to rank order."""
        top_k_retrieve: int = kwargs.get("top_k_retrieve", rank_end)
        populate = kwargs.get("populate_invocations_history", True)
        results = []
        for request in requests:
            check_candidates([c.docid for c in request.candidates], one_prompt=False)
            end = min(rank_end, top_k_retrieve, len(request.candidates))
            result = self.sliding_windows(
                request,
                rank_start=max(rank_start, 0),
                rank_end=end,
                top_k_retrieve=top_k_retrieve,
                shuffle_candidates=shuffle_candidates,
                logging=logging,
                populate_invocations_history=populate,
            )
            n = len(result.candidates)
            result.candidates = [copy.copy(c) for c in result.candidates]
            for i, candidate in enumerate(result.candidates):
                candidate.score = float(n - i)
            results.append(result)
        return results
