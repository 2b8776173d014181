"""From a query and K passages to prompt token ids, with the token layout of the ranking the LLM writes.

The prompt text is RankLLM's own: its template YAML (default ``rank_zephyr_alpha_template.yaml``,
identifiers ``[A]``, ``[B]``, …) rendered by its single-turn listwise handler, so a prompt here is
byte-identical to what RankLLM would send. The tokenizer's chat template turns it into ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_TEMPLATE",
    "IDENTIFIERS",
    "Prompt",
    "PromptConfig",
    "RankingLayout",
    "build_prompt",
    "chat_ids",
    "check_candidates",
    "prompt_from_messages",
    "request_prompt",
    "ranking_layout",
    "ranking_text",
    "template_path",
]

log = logging.getLogger(__name__)

IDENTIFIERS: tuple[str, ...] = tuple(string.ascii_uppercase)
"""RankLLM's alphabetical identifier scheme (``use_alpha``): item k is shown as ``[chr(ord('A') + k)]``."""

DEFAULT_TEMPLATE = "rank_zephyr_alpha_template.yaml"


@dataclass(frozen=True)
class PromptConfig:
    """How a request becomes a prompt."""

    template: str = DEFAULT_TEMPLATE
    """A RankLLM ``singleturn_listwise`` template: a file name among RankLLM's bundled templates, or a path."""
    max_passage_words: int = 300
    """Words kept per passage before the context check (RankLLM's ``max_passage_words`` default)."""
    context_size: int = 4096
    """Token budget for prompt + ranking (RankLLM's default ``context_size``); passages shrink to fit."""


@dataclass(frozen=True)
class RankingLayout:
    """Token layout of a ranking ``[B] > [A] > …``: one distinguishing token per slot at a fixed offset.

    ``tokens(ranking) = head + [first_ids[r0]] + sep + [later_ids[r1]] + sep + … + [later_ids[r_{K-1}]] + tail``.
    The identifier token of slot 0 may differ from later ones (``[A`` vs `` [A`` in tokenizers that merge).
    """

    head: tuple[int, ...]
    first_ids: tuple[int, ...]
    sep: tuple[int, ...]
    later_ids: tuple[int, ...]
    tail: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.first_ids)

    def tokens(self, ranking: Sequence[int]) -> list[int]:
        """Token ids of a full ranking (items as indices into the candidate list)."""
        out = list(self.head) + [self.first_ids[ranking[0]]]
        for item in ranking[1:]:
            out += list(self.sep) + [self.later_ids[item]]
        return out + list(self.tail)


@dataclass(frozen=True)
class Prompt:
    """Prompt token ids for one query and its K candidates, and how its ranking is tokenised."""

    messages: list[dict[str, str]]
    """The chat messages, as RankLLM renders them."""
    token_ids: list[int]
    """Chat-template ids of ``messages`` with the generation prompt, then ``layout.head``."""
    layout: RankingLayout
    passage_words: int | None = None
    """Words per passage actually used: ``max_passage_words``, or fewer where the context forced a cut
    (None for a prompt made from ready messages)."""
    truncated_passages: int | None = None
    """How many passages lost words (to ``max_passage_words`` or to the context)."""


def ranking_text(ranking: Sequence[int]) -> str:
    """``[B] > [A] > …`` for items given as indices; the string the LLM is asked to write."""
    return " > ".join(f"[{IDENTIFIERS[i]}]" for i in ranking)


def _split_piece(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> tuple[list[int], list[int], list[int]]:
    """Tokenise pieces that differ only in their identifier; return (shared prefix, one token per piece, shared suffix)."""
    encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    first = encoded[0]
    n_pre = 0
    while n_pre < len(first) and all(len(e) > n_pre and e[n_pre] == first[n_pre] for e in encoded):
        n_pre += 1
    n_post = 0
    while n_post < len(first) - n_pre and all(
        len(e) > n_post and e[len(e) - 1 - n_post] == first[len(first) - 1 - n_post] for e in encoded
    ):
        n_post += 1
    for text, e in zip(texts, encoded, strict=True):
        if len(e) != n_pre + 1 + n_post:
            pieces = tokenizer.convert_ids_to_tokens(e)
            raise ValueError(
                f"identifier piece {text!r} tokenises as {pieces}: this tokenizer does not give every "
                "identifier exactly one distinguishing token at a fixed offset"
            )
    ids = [e[n_pre] for e in encoded]
    if len(set(ids)) != len(ids):
        raise ValueError(f"identifiers share a token in this tokenizer: {texts}")
    return first[:n_pre], ids, first[len(first) - n_post :]


def ranking_layout(tokenizer: PreTrainedTokenizerBase, k: int) -> RankingLayout:
    """Find and check the token layout of rankings over ``k`` items for this tokenizer.

    Raises:
        ValueError: the tokenizer cannot give one distinguishing token per slot, or the layout does
            not reproduce the tokenizer's own encoding of a full ranking string.
    """
    if not 1 <= k <= len(IDENTIFIERS):
        raise ValueError(f"the identifier scheme has {len(IDENTIFIERS)} identifiers; got {k} candidates")
    # At least two pieces: with one, the shared prefix and suffix would swallow the identifier.
    ids = IDENTIFIERS[: max(k, 2)]
    head, first_ids, post_first = _split_piece(tokenizer, [f"[{c}]" for c in ids])
    pre_later, later_ids, post_later = _split_piece(tokenizer, [f" > [{c}]" for c in ids])
    first_ids, later_ids = first_ids[:k], later_ids[:k]
    if post_first != post_later:
        raise ValueError("the closing bracket tokenises differently after the first identifier and after later ones")
    layout = RankingLayout(
        head=tuple(head),
        first_ids=tuple(first_ids),
        sep=tuple(post_first + pre_later),
        later_ids=tuple(later_ids),
        tail=tuple(post_later),
    )
    # The forced separators must be what the tokenizer itself produces for the whole string, or the
    # constrained greedy ranking would be scored on token sequences the LLM never writes.
    for ranking in (list(range(k)), list(reversed(range(k)))):
        expected = tokenizer.encode(ranking_text(ranking), add_special_tokens=False)
        if layout.tokens(ranking) != expected:
            raise ValueError(
                f"ranking {ranking_text(ranking)!r} tokenises as {tokenizer.convert_ids_to_tokens(expected)}, "
                "not as separate identifier pieces; this tokenizer merges across identifiers"
            )
    return layout


def check_candidates(docids: Sequence[Any], one_prompt: bool = True) -> None:
    """Reject candidate lists that no listwise prompt can rank.

    Args:
        docids: the candidates' ids, in order.
        one_prompt: the list goes into one prompt, so it may not outnumber the identifiers
            (False where sliding windows split it).

    Raises:
        ValueError: no candidates, a repeated docid, or (``one_prompt``) more candidates than identifiers.
    """
    if not docids:
        raise ValueError("the request has no candidates to rank")
    seen: set[str] = set()
    for docid in docids:
        if str(docid) in seen:
            raise ValueError(f"duplicate docid {docid!r} in the candidate list")
        seen.add(str(docid))
    if one_prompt and len(docids) > len(IDENTIFIERS):
        raise ValueError(
            f"{len(docids)} candidates but the identifier scheme has {len(IDENTIFIERS)} ([A]..[Z]); "
            "rank at most 26 at once (RankLLM's sliding windows rank longer lists window by window)"
        )


def template_path(name_or_path: str | Path) -> Path:
    """A template file: ``name_or_path`` itself where it exists, else RankLLM's bundled template of that name."""
    path = Path(name_or_path)
    if path.exists():
        return path
    return Path(str(resources.files("rank_llm.rerank") / "prompt_templates" / str(name_or_path)))


def _load_template(name_or_path: str) -> dict[str, str]:
    path = template_path(name_or_path)
    try:
        with open(path) as f:
            template = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f"prompt template {name_or_path!r} is neither a file nor one of RankLLM's templates") from err
    except yaml.YAMLError as err:
        raise ValueError(f"prompt template {path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(template, dict) or template.get("method") != "singleturn_listwise":
        raise ValueError(f"prompt template {path} is not a RankLLM 'singleturn_listwise' template")
    return template


@contextlib.contextmanager
def _quiet():
    # RankLLM's handler prints "Template validated successfully!" on every construction.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _handler(template_name: str):
    from rank_llm.rerank.listwise.singleturn_listwise_inference_handler import SingleTurnListwiseInferenceHandler

    with _quiet():
        return SingleTurnListwiseInferenceHandler(_load_template(template_name))


def _as_doc(doc: Mapping[str, Any] | str) -> Mapping[str, Any]:
    return {"text": doc} if isinstance(doc, str) else doc


def _content_words(handler, doc: Mapping[str, Any]) -> int:
    try:
        return len(handler._convert_doc_to_prompt_content(doc, 10**9).split())
    except KeyError as err:
        raise ValueError(
            f"candidate doc has none of the fields RankLLM reads (text, segment, contents, content, body, passage): "
            f"{sorted(doc)}"
        ) from err


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of chat ``messages`` with the generation prompt, through the tokenizer's chat template."""
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; listwise prompts are chat messages")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding, 4.x a plain list.
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def prompt_from_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], k: int) -> Prompt:
    """Tokenise ready chat messages (e.g. from RankLLM's ``create_prompt``) that list ``k`` candidates."""
    return _tokenised(tokenizer, messages, ranking_layout(tokenizer, k))


def _tokenised(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], layout: RankingLayout) -> Prompt:
    # ``head`` ("[" here) is part of the prompt: the first-slot distribution is read right after it.
    return Prompt(messages, chat_ids(tokenizer, messages) + list(layout.head), layout)


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    docs: Sequence[Mapping[str, Any] | str],
    config: PromptConfig = PromptConfig(),
    max_tokens: int | None = None,
) -> Prompt:
    """Render RankLLM's prompt for ``query`` and ``docs`` and tokenise it with the chat template.

    Passages are cut to ``config.max_passage_words`` words; if prompt plus ranking still exceed
    ``min(config.context_size, max_tokens)`` tokens, the per-passage word limit shrinks (RankLLM's
    rule) until they fit, and a warning says so.

    Raises:
        ValueError: bad candidates (see ``check_candidates``), a doc without text, a template or
            tokenizer that cannot express the ranking, or a query that alone overflows the context.
    """
    from rank_llm.data import Candidate, Query, Result

    k = len(docs)
    layout = ranking_layout(tokenizer, k)
    docs = [_as_doc(d) for d in docs]
    handler = _handler(config.template)
    limit = config.context_size if max_tokens is None else min(config.context_size, max_tokens)
    n_ranking = len(layout.tokens(range(k)))
    result = Result(
        query=Query(text=query, qid=""),
        candidates=[Candidate(docid=i, score=0.0, doc=dict(d)) for i, d in enumerate(docs)],
    )
    full_words = [_content_words(handler, d) for d in docs]
    words = config.max_passage_words
    while True:
        messages = handler.generate_prompt(result, rank_start=0, rank_end=k, max_length=words, use_alpha=True)
        prompt = _tokenised(tokenizer, messages, layout)
        ids = prompt.token_ids
        overflow = len(ids) + n_ranking - limit
        if overflow <= 0:
            break
        if words <= 1:
            raise ValueError(
                f"the prompt needs {len(ids) + n_ranking} tokens even with 1 word per passage; "
                f"the context holds {limit}"
            )
        # RankLLM's shrink rule: about 4 tokens per word per passage, at least one word a step.
        words = max(1, words - max(1, overflow // (k * 4)))
    if words < config.max_passage_words:
        log.warning("passages cut to %d words each so that the prompt fits %d tokens", words, limit)
    return replace(prompt, passage_words=words, truncated_passages=sum(n > words for n in full_words))


def request_prompt(
    tokenizer: PreTrainedTokenizerBase,
    request: Any,
    config: PromptConfig = PromptConfig(),
    max_tokens: int | None = None,
) -> Prompt:
    """``build_prompt`` for a RankLLM ``Request`` (its query text and its candidates' docs)."""
    return build_prompt(tokenizer, request.query.text, [c.doc for c in request.candidates], config, max_tokens)
