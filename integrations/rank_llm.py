"""RankLLM drop-in: ``Reranker(RSDReranker(...)).rerank_batch(requests, rank_end=100)``.

RankLLM keeps doing what it does: sliding windows (window 20, stride 10 by default), permutation
repair (``receive_permutation``), ``Result``/``InferenceInvocation`` bookkeeping and ``DataWriter``
output. ``rerank_batch`` walks the windows of every request in lockstep, RankLLM's order within each
request (a request's windows stay sequential, each depends on the last), and decodes the i-th window
of up to ``batch_size`` requests in one batched session. Each window's prompt is RankLLM's own template rendering; instead of free generation the
window is decoded by the core engine (any of ``rsd_rerank.methods.METHODS``: ``rsd``, ``rsd-drafts``, ``greedy``, ``std``, ``gsd``,
``consensus``, ``pdm``, ``sdm``, ``blockwise``, ``medusa``, ``first-ft``, ``rankzephyr-ft``, ``first-sd``) and written back
as the ranking string ``[B] > [A] > …`` (``[2] > [1] > …`` with a numeric template) that RankLLM parses.

``rerank_windowed`` is the one path from requests to reranked lists for the ``rerank`` and
``pipeline`` commands: it goes through ``RSDReranker.rerank_batch``, so every command and the Python
API walk the same windows.
"""

from __future__ import annotations

import asyncio
import copy
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rank_llm.data import Request, Result
from rank_llm.rerank.listwise.listwise_rankllm import ListwiseRankLLM

from rsd_rerank.methods import DecodingConfig, rank_many
from rsd_rerank.prompt import (
    DEFAULT_TEMPLATE,
    PromptConfig,
    build_prompt,
    chat_ids,
    check_candidates,
    has_text,
    identifier,
    max_identifiers,
    numeric_identifiers,
    prompt_from_messages,
    quiet_stdout,
    ranking_text,
    template_path,
    warn_context_cuts,
)
from rsd_rerank.runs import BatchConfig, WindowConfig, request_chunks
from rsd_rerank.session import batched_sessions
from rsd_rerank.targets import Target, load_target

__all__ = ["RSDReranker", "Reranked", "TextReranker", "rerank_windowed", "text_request"]


class RSDReranker(ListwiseRankLLM):
    """A RankLLM listwise reranker that decodes each window with up-to-down speculative decoding.

    Args:
        model: as ``rsd_rerank.targets.load_target``: ``None`` (embedded SmolLM2), a name, a local
            directory, a loaded model (with ``tokenizer``) or a ``Target``.
        tokenizer: the tokenizer of a loaded ``model``.
        prompt_template_path: a RankLLM ``singleturn_listwise`` template (name of a bundled one, or
            a path); its output format picks the identifiers: letters (``rank_zephyr_alpha_template.yaml``,
            the default) or numbers (RankZephyr's ``rank_zephyr_template.yaml``, any window size).
        method: ``rsd-drafts`` (default: the learned agent's, GSD's and PDM's drafts a pass), ``rsd`` (the
            learned agent's alone, as in the paper), ``greedy`` (the LLM's own ranking), ``std``, ``gsd``,
            ``consensus``, or one of the paper's baselines (``rsd_rerank.methods.METHODS``).
        budget: LLM verification passes per window.
        agent: for ``rsd`` and ``rsd-drafts``, an agent checkpoint directory or bundled name; None picks the bundled
            agent trained on the model (``RSDReranker()`` uses the embedded SmolLM2's).
        ranker: a baseline's heads, fine-tuned ranker or drafter (``DecodingConfig.ranker``).
        window_size, stride, context_size, max_passage_words: as in RankLLM.
        device, dtype: where and in what precision a model loaded by name runs (``load_target``).
        batch_size, max_batch_tokens, batch_invariant: windows decoded together, and whether each in passes
            of its own fixed shape (``rsd_rerank.runs.BatchConfig``).

    Every window's passes, i* per round and seconds are recorded in the invocation's
    ``token_usage`` (when ``populate_invocations_history`` is passed, as in RankLLM). After
    reranking, the candidates in ``[rank_start, rank_end)`` get strictly decreasing scores above the
    first candidate below the range (rank order; a TREC run written from the results keeps the order
    even where first-stage scores tie); scores outside the range are RankLLM's, untouched.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        prompt_template_path: str = DEFAULT_TEMPLATE,
        method: str = DecodingConfig.method,
        budget: int = DecodingConfig.budget,
        agent: str | None = None,
        ranker: str | None = None,
        window_size: int = 20,
        stride: int = 10,
        context_size: int = PromptConfig.context_size,
        max_passage_words: int = PromptConfig.max_passage_words,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = BatchConfig.batch_size,
        max_batch_tokens: int | None = BatchConfig.max_batch_tokens,
        batch_invariant: bool = BatchConfig.batch_invariant,
    ) -> None:
        template = str(template_path(prompt_template_path))
        self._numeric = numeric_identifiers(template)
        limit = max_identifiers(self._numeric)
        if window_size < 1 or (limit is not None and window_size > limit):
            raise ValueError(
                f"window_size must be 1..{limit} (identifiers [A]..[Z]; a numeric template such as "
                f"rank_zephyr_template.yaml takes any), got {window_size}"
            )
        self._target: Target = load_target(model, tokenizer, device=device, dtype=dtype)
        self._decoding = DecodingConfig(method, budget, agent, ranker)
        self._batching = BatchConfig(batch_size, max_batch_tokens, batch_invariant)
        self._prompt_config = PromptConfig(template, max_passage_words, context_size)
        self._model_lock = threading.Lock()
        self.passage_words: list[int | None] = []
        """Words per passage of every window prompt made so far (``warn_context_cuts`` reports them)."""
        with quiet_stdout():  # RankLLM prints "Template validated successfully!" and more on construction
            super().__init__(
                model=self._target.name,
                context_size=context_size,
                prompt_template_path=template,
                window_size=window_size,
                stride=stride,
                use_alpha=not self._numeric,
                batch_size=batch_size,
                max_passage_words=max_passage_words,
            )

    # -- prompts ---------------------------------------------------------------------------------

    def create_prompt(self, result: Result, rank_start: int, rank_end: int) -> tuple[list[dict[str, str]], int]:
        """RankLLM's chat messages for the window, fitted to the context; and their token count."""
        window = result.candidates[rank_start:rank_end]
        if not window:  # RankLLM renders an empty window too ("0 passages"); nothing is ever decoded from it
            messages = self._inference_handler.generate_prompt(
                result,
                rank_start=rank_start,
                rank_end=rank_end,
                max_length=self._max_passage_words,
                use_alpha=self._use_alpha,
            )
            return messages, len(chat_ids(self._target.tokenizer, messages))
        check_candidates([c.docid for c in window], numeric=self._numeric)
        prompt = build_prompt(
            self._target.tokenizer,
            result.query.text,
            [c.doc for c in window],
            self._prompt_config,
            self._target.max_positions,
        )
        self.passage_words.append(prompt.passage_words)
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
        return len(self._target.tokenizer.encode(ranking_text(range(k), self._numeric), add_special_tokens=False))

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
        """Decode windows, ``batch_size`` at a time in one session each; K is read from each prompt (and
        must equal ``current_window_size`` where that is given)."""
        ks = [self._listed(p) for p in prompts]
        if current_window_size is not None and any(k != current_window_size for k in ks):
            raise ValueError(
                f"current_window_size is {current_window_size} but the prompts list {sorted(set(ks))} passages"
            )
        return self._decode_windows(prompts, ks)

    def _listed(self, prompt: list[dict[str, str]]) -> int:
        """How many passages a prompt lists: its body lines ``[1] …``, ``[2] …`` (or ``[A] …``) in order.
        RankLLM rewrites ``[n]`` inside passages and queries to ``(n)``, so only the body lines match."""
        text = "\n".join(str(m.get("content", "")) for m in prompt)
        found = re.findall(r"^\[(\d+|[A-Z])\] ", text, flags=re.MULTILINE)
        expected = [identifier(i, self._numeric) for i in range(len(found))]
        if not found or found != expected:
            raise ValueError(
                f"cannot read the passages of this prompt: its body lines name {found[:30]}, not "
                f"{expected[:3] or [identifier(0, self._numeric)]}… in order"
            )
        return len(found)

    def _decode_windows(
        self, prompts: list[list[dict[str, str]]], ks: list[int]
    ) -> list[tuple[str, None, dict[str, Any]]]:
        """Decode windows (chat messages listing ``ks[i]`` candidates), batched; RankLLM's output tuples."""
        tokenized = [
            prompt_from_messages(self._target.tokenizer, p, k, self._numeric) for p, k in zip(prompts, ks, strict=True)
        ]
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
                out.append((ranking_text(decoded[q].ranking, self._numeric), None, usage))
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
        """RankLLM's sliding windows over every request, the i-th windows of all requests decoded together.

        A request without candidates gives an empty ``Result`` (as RankLLM's own rerankers do); a
        window of one candidate needs no LLM call. ``populate_invocations_history`` (default False,
        RankLLM's) keeps every window's prompt and usage in the result.

        Raises:
            ValueError: a request repeats a docid (before any window is decoded).
        """
        # One caller at a time on the model, as RankLLM caps the LLM work in flight per instance:
        # concurrent rerank_async callers would otherwise run forwards at once on one model and share
        # the session caches from two threads.
        with self._model_lock:
            return self._rerank_batch(requests, rank_start, rank_end, shuffle_candidates, logging, **kwargs)

    def _rerank_batch(
        self,
        requests: list[Request],
        rank_start: int,
        rank_end: int,
        shuffle_candidates: bool,
        logging: bool,
        **kwargs: Any,
    ) -> list[Result]:
        top_k_retrieve: int = kwargs.get("top_k_retrieve", rank_end)
        populate = kwargs.get("populate_invocations_history", False)
        for request in requests:
            if request.candidates:
                check_candidates([c.docid for c in request.candidates], one_prompt=False)
        results = [
            Result(query=copy.deepcopy(r.query), candidates=copy.deepcopy(r.candidates), invocations_history=[])
            for r in requests
        ]
        if shuffle_candidates:
            self.shuffle_and_rescore(results, rank_start, rank_end)
        window_size = min(self._window_size, top_k_retrieve)
        first = max(rank_start, 0)
        ends = {i: min(rank_end, top_k_retrieve, len(result.candidates)) for i, result in enumerate(results)}
        scored = dict(ends)  # the range whose scores follow rank order at the end, textless candidates included
        for i, result in enumerate(results):
            ends[i] = _textless_below(result, first, ends[i])
        # Each request's next window, exactly as RankLLM's sliding_windows walks it: from the bottom up.
        windows: dict[int, tuple[int, int]] = {}
        for i, end in ends.items():
            if end > max(end - window_size, first):
                windows[i] = (max(end - window_size, first), end)
        while windows:
            order = [i for i in windows if windows[i][1] - windows[i][0] > 1]
            prompts = [self.create_prompt(results[i], *windows[i]) for i in order]
            outputs = self._decode_windows([p for p, _ in prompts], [windows[i][1] - windows[i][0] for i in order])
            for i, (prompt, in_tokens), llm_out in zip(order, prompts, outputs, strict=True):
                results[i] = self._apply_llm_output_to_result(
                    results[i], llm_out, prompt, in_tokens, *windows[i], logging, populate
                )
            for i in list(windows):
                start, end = windows.pop(i)
                if start != first:  # once the first candidate is in a window, further windows are redundant
                    end -= self._stride
                    start = max(start - self._stride, first)
                    if end > start:
                        windows[i] = (start, end)
        for i, result in enumerate(results):
            _rank_order_scores(result, first, scored[i])
        return results

    async def rerank_batch_async(
        self,
        requests: list[Request],
        rank_start: int = 0,
        rank_end: int = 100,
        shuffle_candidates: bool = False,
        logging: bool = False,
        *,
        isolate_llm_slots: bool = False,
        **kwargs: Any,
    ) -> list[Result]:
        """``rerank_batch`` in a worker thread: the same windows, rankings, scores and history as the
        sync path (RankLLM's async path would decode window by window through ``run_llm_async``)."""
        return await asyncio.to_thread(
            self.rerank_batch, requests, rank_start, rank_end, shuffle_candidates, logging, **kwargs
        )


def _textless_below(result: Result, start: int, end: int) -> int:
    """Move the candidates of ``result.candidates[start:end]`` whose doc has no text below the others
    (each group in input order) and return where the candidates with text end: only they are ranked
    (an LLM asked to order empty passages orders them arbitrarily). ``read_requests`` warns about them."""
    window = result.candidates[start:end]
    shown = [has_text(c.doc) for c in window]
    if not all(shown):
        texted = [c for c, s in zip(window, shown, strict=True) if s]
        result.candidates[start:end] = texted + [c for c, s in zip(window, shown, strict=True) if not s]
    return start + sum(shown)


def _rank_order_scores(result: Result, start: int, end: int) -> None:
    """Scores of ``result.candidates[start:end]`` strictly decreasing in rank order, above the first
    candidate below the range (its score, or 0); the others keep theirs."""
    below = result.candidates[end].score if end < len(result.candidates) else None
    base = float(below) if below is not None else 0.0
    result.candidates = [copy.copy(c) for c in result.candidates]
    for i in range(start, end):
        result.candidates[i].score = base + float(end - i)


@dataclass(frozen=True)
class Reranked:
    """One request's candidates in their new order (reranked top, then the rest as they came), with
    each window's usage (passes, i* per round, seconds)."""

    qid: str
    docids: list[str]
    windows: list[dict[str, Any]]

    @property
    def passes(self) -> int:
        return sum(w["passes"] for w in self.windows)

    @property
    def prompt_tokens(self) -> int:
        return sum(w["prompt_tokens"] for w in self.windows)


def rerank_windowed(
    target: Target,
    requests: Sequence[Request],
    decoding: DecodingConfig,
    prompt: PromptConfig,
    batching: BatchConfig = BatchConfig(),
    windows: WindowConfig = WindowConfig(),
) -> Iterator[list[Reranked]]:
    """Rerank each request's top ``windows.rerank_top`` candidates (all by default) with RankLLM's sliding
    windows, ``batching.batch_size`` requests at a time; yields each batch's results in request order.

    Raises:
        ValueError: a repeated docid, a doc without text, or a template that cannot express the ranking.
    """
    reranker = RSDReranker(
        target,
        prompt_template_path=prompt.template,
        method=decoding.method,
        budget=decoding.budget,
        agent=decoding.agent,
        ranker=decoding.ranker,
        window_size=windows.window_size,
        stride=windows.stride,
        context_size=prompt.context_size,
        max_passage_words=prompt.max_passage_words,
        batch_size=batching.batch_size,
        max_batch_tokens=batching.max_batch_tokens,
        batch_invariant=batching.batch_invariant,
    )
    try:
        for chunk in request_chunks(requests, batching):
            depth = max(len(r.candidates) for r in chunk) if windows.rerank_top is None else windows.rerank_top
            results = reranker.rerank_batch(chunk, rank_end=depth, populate_invocations_history=True)
            yield [
                Reranked(
                    str(result.query.qid),
                    [str(c.docid) for c in result.candidates],
                    [inv.token_usage for inv in result.invocations_history or []],
                )
                for result in results
            ]
    finally:
        warn_context_cuts(reranker.passage_words, prompt)


def text_request(qid: str, query: str, docids: Sequence[str], texts: Sequence[Any]) -> Request:
    """A RankLLM request of ``texts`` in the order given (a retriever's, best first: scores decrease)."""
    from dacite import from_dict

    candidates = [
        {"docid": d, "score": float(len(texts) - i), "doc": {"text": str(t)}}
        for i, (d, t) in enumerate(zip(docids, texts, strict=True))
    ]
    return from_dict(data_class=Request, data={"query": {"qid": qid, "text": query}, "candidates": candidates})


class TextReranker:
    """One query's texts reranked, the path of the RAG frameworks' adapters (LlamaIndex, LangChain)
    through ``rerank_windowed``: RankLLM's prompts and windows, the batched engine.

    Args:
        model: as ``rsd_rerank.targets.load_target`` (None: the embedded SmolLM2), or a loaded ``Target``.
        method, budget, agent: as ``rsd-rerank --method --budget --agent``.
        top_n: texts kept, best first (None: all of them, reordered).
        template, max_passage_words: RankLLM's prompt template and passage cut.
        window_size, stride: RankLLM's sliding windows over more than ``window_size`` texts.
        device, dtype: where a model loaded by name runs.

    Raises:
        ValueError: bad settings, before the model loads.
    """

    def __init__(
        self,
        model: Any = None,
        method: str = DecodingConfig.method,
        budget: int = 5,
        agent: str | None = None,
        top_n: int | None = None,
        template: str = PromptConfig.template,
        max_passage_words: int = PromptConfig.max_passage_words,
        window_size: int = WindowConfig.window_size,
        stride: int = WindowConfig.stride,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be >= 1 or None, got {top_n}")
        self.top_n = top_n
        self.decoding = DecodingConfig(method, budget, agent)
        self.prompt = PromptConfig(template=template, max_passage_words=max_passage_words)
        self.windows = WindowConfig(window_size=window_size, stride=stride)
        self.target = load_target(model, device=device, dtype=dtype)

    def order(self, query: str, texts: Sequence[str]) -> list[int]:
        """Indices of ``texts`` (given best first, as a retriever ranked them) in their reranked
        order, the first ``top_n`` of them."""
        if not texts:
            return []
        request = text_request("0", query, [str(i) for i in range(len(texts))], texts)
        ((reranked,),) = rerank_windowed(
            self.target, [request], self.decoding, self.prompt, BatchConfig(), self.windows
        )
        order = [int(docid) for docid in reranked.docids]
        return order[: self.top_n] if self.top_n is not None else order
