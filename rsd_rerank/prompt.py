"""From a query and K passages to prompt token ids, with the token layout of the ranking the LLM writes.

The prompt text is RankLLM's own: its template YAML (default ``rank_zephyr_alpha_template.yaml``,
identifiers ``[A]``, ``[B]``, …) rendered by its single-turn listwise handler, so a prompt here is
byte-identical to what RankLLM would send. The tokenizer's chat template turns it into ids.

Identifiers follow the template: alphabetical (``[A]`` … ``[Z]``) where its output regex expects
letters, numerical (``[1]``, ``[2]``, … ``[100]``) where it expects digits, as RankZephyr's
``rank_zephyr_template.yaml`` does. An identifier may be several tokens (``[12]`` is ``[``, ``1``,
``2``, ``]`` in SmolLM2's tokenizer); ``RankingLayout`` holds each item's token piece, and the
pieces of one slot must form a prefix-free code so that a slot's distribution over items is the
product of its tokens' probabilities.
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

from rsd_rerank.config import bounded, check_ranges

__all__ = [
    "DEFAULT_TEMPLATE",
    "IDENTIFIERS",
    "NUMERIC_TEMPLATE",
    "Prompt",
    "PromptConfig",
    "RankingLayout",
    "build_prompt",
    "chat_ids",
    "check_candidates",
    "has_text",
    "TEXT_FIELDS",
    "prompt_from_messages",
    "quiet_stdout",
    "request_prompt",
    "request_prompts",
    "shown_passages",
    "warn_context_cuts",
    "ranking_layout",
    "ranking_text",
    "numeric_identifiers",
    "template_path",
]

log = logging.getLogger(__name__)

IDENTIFIERS: tuple[str, ...] = tuple(string.ascii_uppercase)
"""RankLLM's alphabetical identifier scheme (``use_alpha``): item k is shown as ``[chr(ord('A') + k)]``."""

DEFAULT_TEMPLATE = "rank_zephyr_alpha_template.yaml"
NUMERIC_TEMPLATE = "rank_zephyr_template.yaml"
"""RankZephyr's canonical template, identifiers ``[1]`` … ``[K]``."""

# The ranking strings a template may ask for (its ``output_validation_regex``); anything else (a
# ``[rankstart]`` wrapper, ``PASSAGE3`` identifiers) is a format the session cannot teacher-force.
_ALPHA_OUTPUT = r"^\[[A-Z]\]( > \[[A-Z]\])*$"
_NUMERIC_OUTPUT = r"^\[\d+\]( > \[\d+\])*$"


@dataclass(frozen=True)
class PromptConfig:
    """How a request becomes a prompt."""

    template: str = DEFAULT_TEMPLATE
    """A RankLLM ``singleturn_listwise`` template: a file name among RankLLM's bundled templates, or a path."""
    max_passage_words: int = bounded(300, 1)
    """Words kept per passage before the context check (RankLLM's ``max_passage_words`` default)."""
    context_size: int = bounded(4096, 1)
    """Token budget for prompt + ranking (RankLLM's default ``context_size``); passages shrink to fit."""

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class RankingLayout:
    """Token layout of a ranking ``[B] > [A] > …``: each item's identifier piece, between fixed separators.

    ``tokens(ranking) = head + first_pieces[r0] + sep + later_pieces[r1] + sep + … + later_pieces[r_{K-1}] + tail``.
    The piece of slot 0 may differ from later ones (``[A`` vs `` [A`` in tokenizers that merge). A
    piece is one token for letters (the closing bracket then sits in ``sep``) and may be several for
    numbers (``1``, ``2``, ``]`` for ``[12]``: the bracket stays in the piece, or ``[1]`` would be a
    prefix of ``[12]``). Within a slot the pieces are a prefix-free code.
    """

    head: tuple[int, ...]
    first_pieces: tuple[tuple[int, ...], ...]
    sep: tuple[int, ...]
    later_pieces: tuple[tuple[int, ...], ...]
    tail: tuple[int, ...]
    numeric: bool = False
    """Identifiers ``[1]``, ``[2]``, … rather than ``[A]``, ``[B]``, …"""

    @property
    def k(self) -> int:
        return len(self.first_pieces)

    @property
    def single_token(self) -> bool:
        """Every identifier is one token (the session's fixed-stride fast path applies)."""
        return all(len(p) == 1 for p in self.first_pieces + self.later_pieces)

    @property
    def first_ids(self) -> tuple[int, ...]:
        """Slot 0's identifier tokens, one per item (single-token layouts only)."""
        assert self.single_token
        return tuple(p[0] for p in self.first_pieces)

    @property
    def later_ids(self) -> tuple[int, ...]:
        """Later slots' identifier tokens, one per item (single-token layouts only)."""
        assert self.single_token
        return tuple(p[0] for p in self.later_pieces)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` reads it back): a prompt bundle carried to another machine."""
        return {
            "head": list(self.head),
            "first_pieces": [list(p) for p in self.first_pieces],
            "sep": list(self.sep),
            "later_pieces": [list(p) for p in self.later_pieces],
            "tail": list(self.tail),
            "numeric": self.numeric,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RankingLayout:
        return cls(
            head=tuple(data["head"]),
            first_pieces=tuple(tuple(p) for p in data["first_pieces"]),
            sep=tuple(data["sep"]),
            later_pieces=tuple(tuple(p) for p in data["later_pieces"]),
            tail=tuple(data["tail"]),
            numeric=bool(data["numeric"]),
        )

    def piece(self, slot: int, item: int) -> tuple[int, ...]:
        """The tokens that name ``item`` at ``slot``."""
        return (self.first_pieces if slot == 0 else self.later_pieces)[item]

    def text(self, ranking: Sequence[int]) -> str:
        """The ranking string in this layout's identifiers."""
        return ranking_text(ranking, self.numeric)

    def tokens(self, ranking: Sequence[int]) -> list[int]:
        """Token ids of a full ranking (items as indices into the candidate list)."""
        out = list(self.head) + list(self.first_pieces[ranking[0]])
        for item in ranking[1:]:
            out += list(self.sep) + list(self.later_pieces[item])
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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` reads it back): the prompt cache's entries, benchmark bundles."""
        return {
            "messages": self.messages,
            "token_ids": list(self.token_ids),
            "layout": self.layout.to_json(),
            "passage_words": self.passage_words,
            "truncated_passages": self.truncated_passages,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prompt:
        return cls(
            messages=list(data["messages"]),
            token_ids=list(data["token_ids"]),
            layout=RankingLayout.from_json(data["layout"]),
            passage_words=data.get("passage_words"),
            truncated_passages=data.get("truncated_passages"),
        )


def identifier(item: int, numeric: bool = False) -> str:
    """The identifier of ``item`` (an index): ``1``, ``2``, … or ``A``, ``B``, …"""
    return str(item + 1) if numeric else IDENTIFIERS[item]


def ranking_text(ranking: Sequence[int], numeric: bool = False) -> str:
    """``[B] > [A] > …`` (or ``[2] > [1] > …``) for items given as indices; the string the LLM is asked to write."""
    return " > ".join(f"[{identifier(i, numeric)}]" for i in ranking)


def _prefix_free(pieces: Sequence[Sequence[int]]) -> bool:
    tuples = sorted(tuple(p) for p in pieces)
    return all(p and p != q[: len(p)] for p, q in zip(tuples, tuples[1:] + [()], strict=True))


def _split_piece(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[list[int], list[tuple[int, ...]], list[int]]:
    """Tokenise pieces that differ only in their identifier; return (shared prefix, each piece's own
    tokens, shared suffix). The suffix is only as long as leaves the own tokens a prefix-free code."""
    encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    first = encoded[0]
    shortest = min(len(e) for e in encoded)
    n_pre = 0
    while n_pre < shortest and all(e[n_pre] == first[n_pre] for e in encoded):
        n_pre += 1
    n_post = 0
    while n_post < shortest - n_pre - 1 and all(
        e[len(e) - 1 - n_post] == first[len(first) - 1 - n_post] for e in encoded
    ):
        n_post += 1
    while n_post and not _prefix_free([e[n_pre : len(e) - n_post] for e in encoded]):
        n_post -= 1
    pieces = [tuple(e[n_pre : len(e) - n_post]) for e in encoded]
    if not _prefix_free(pieces):
        shown = {text: tokenizer.convert_ids_to_tokens(e) for text, e in zip(texts, encoded, strict=True)}
        raise ValueError(
            f"identifier pieces {shown} do not tokenise as a prefix-free code after a shared prefix: "
            "the LLM's choice of identifier cannot be read token by token"
        )
    return first[:n_pre], pieces, first[len(first) - n_post :]


def ranking_layout(tokenizer: PreTrainedTokenizerBase, k: int, numeric: bool = False) -> RankingLayout:
    """Find and check the token layout of rankings over ``k`` items for this tokenizer.

    Raises:
        ValueError: the identifiers are not a prefix-free code in this tokenizer, or the layout does
            not reproduce the tokenizer's own encoding of a full ranking string.
    """
    limit = max_identifiers(numeric)
    if k < 1 or (limit is not None and k > limit):
        raise ValueError(f"the identifier scheme has {limit} identifiers; got {k} candidates")
    # At least two pieces: with one, the shared prefix and suffix would swallow the identifier. Numbers
    # take at least ten, so that "[1]" meets "[10]" and every K gets the same separator (one session
    # may batch windows of 5 and of 20).
    ids = [identifier(i, numeric) for i in range(max(k, 10 if numeric else 2))]
    head, first_pieces, post_first = _split_piece(tokenizer, [f"[{c}]" for c in ids])
    pre_later, later_pieces, post_later = _split_piece(tokenizer, [f" > [{c}]" for c in ids])
    if post_first != post_later:
        raise ValueError("the closing bracket tokenises differently after the first identifier and after later ones")
    layout = RankingLayout(
        head=tuple(head),
        first_pieces=tuple(first_pieces[:k]),
        sep=tuple(post_first + pre_later),
        later_pieces=tuple(later_pieces[:k]),
        tail=tuple(post_later),
        numeric=numeric,
    )
    # The forced separators must be what the tokenizer itself produces for the whole string, or the
    # constrained greedy ranking would be scored on token sequences the LLM never writes.
    for ranking in (list(range(k)), list(reversed(range(k)))):
        expected = tokenizer.encode(layout.text(ranking), add_special_tokens=False)
        if layout.tokens(ranking) != expected:
            raise ValueError(
                f"ranking {layout.text(ranking)!r} tokenises as {tokenizer.convert_ids_to_tokens(expected)}, "
                "not as separate identifier pieces; this tokenizer merges across identifiers"
            )
    return layout


def max_identifiers(numeric: bool) -> int | None:
    """How many candidates one prompt can name: 26 letters, or any number (None) of numbers."""
    return None if numeric else len(IDENTIFIERS)


def check_candidates(docids: Sequence[Any], one_prompt: bool = True, numeric: bool = False) -> None:
    """Reject candidate lists that no listwise prompt can rank.

    Args:
        docids: the candidates' ids, in order.
        one_prompt: the list goes into one prompt, so it may not outnumber the identifiers
            (False where sliding windows split it).
        numeric: the identifiers are numbers (no limit on their count).

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
    if one_prompt and not numeric and len(docids) > len(IDENTIFIERS):
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


def _load_template(name_or_path: str) -> tuple[dict[str, str], bool]:
    """A checked ``singleturn_listwise`` template, and whether its ranking uses numbers (else letters)."""
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
    output = str(template.get("output_validation_regex", "")).strip()
    output = output[2:-1] if output[:2] in ('r"', "r'") else output  # RankLLM keeps the r"…" in the YAML string
    if output not in (_ALPHA_OUTPUT, _NUMERIC_OUTPUT):
        raise ValueError(
            f"prompt template {path} asks for rankings matching {output or 'nothing'!r}; the session can "
            f"teacher-force only '[B] > [A] > …' ({_ALPHA_OUTPUT}) or '[2] > [1] > …' ({_NUMERIC_OUTPUT})"
        )
    # Without {query} in the prefix or suffix the prompt would hold no query at all, and rank nothing.
    if not any("{query}" in str(template.get(part) or "") for part in ("prefix", "suffix")):
        raise ValueError(f"prompt template {path} has no {{query}} placeholder in its prefix or suffix")
    return template, output == _NUMERIC_OUTPUT


def numeric_identifiers(template: str | Path) -> bool:
    """Whether ``template`` (a RankLLM template name or path) numbers its passages ``[1]``, ``[2]``, …

    Raises:
        ValueError: not a template, or one whose output format is not a plain ``[x] > [y]`` ranking.
    """
    return _load_template(str(template))[1]


@contextlib.contextmanager
def quiet_stdout():
    """Swallow what RankLLM prints on construction ("Template validated successfully!", …)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _handler(template: dict[str, str]):
    """RankLLM's single-turn listwise handler of a template ``_load_template`` checked."""
    from rank_llm.rerank.listwise.singleturn_listwise_inference_handler import SingleTurnListwiseInferenceHandler

    with quiet_stdout():
        return SingleTurnListwiseInferenceHandler(template)


TEXT_FIELDS = ("text", "segment", "contents", "content", "body", "passage")
"""The doc fields RankLLM's prompt reads a passage from, in its order (``title`` may come with any of them)."""


def _as_doc(doc: Mapping[str, Any] | str) -> Mapping[str, Any]:
    return {"text": doc} if isinstance(doc, str) else doc


def has_text(doc: Mapping[str, Any] | str) -> bool:
    """Whether the prompt shows the LLM any text for this doc: its title, or the first of ``TEXT_FIELDS``
    it holds (the one RankLLM reads; a later field is never shown)."""
    doc = _as_doc(doc)
    field = next((f for f in TEXT_FIELDS if f in doc), None)
    return any(str(doc.get(name) or "").strip() for name in ("title", field) if name is not None)


def _content_words(handler, doc: Mapping[str, Any]) -> int:
    try:
        return len(handler._convert_doc_to_prompt_content(doc, 10**9).split())
    except KeyError as err:
        raise ValueError(
            f"candidate doc has none of the fields RankLLM reads ({', '.join(TEXT_FIELDS)}): {sorted(doc)}"
        ) from err


def shown_passages(request: Any, prompt: Prompt, config: PromptConfig = PromptConfig()) -> list[str]:
    """The passages of ``request`` as ``prompt`` (built from it with ``config``) shows them: RankLLM's
    text of each doc, cut to the prompt's words per passage."""
    handler = _handler(_load_template(config.template)[0])
    words = prompt.passage_words or config.max_passage_words
    return [handler._convert_doc_to_prompt_content(_as_doc(c.doc), words) for c in request.candidates]


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of chat ``messages`` with the generation prompt, through the tokenizer's chat template."""
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; listwise prompts are chat messages")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding, 4.x a plain list.
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def prompt_from_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], k: int, numeric: bool = False
) -> Prompt:
    """Tokenise ready chat messages (e.g. from RankLLM's ``create_prompt``) that list ``k`` candidates."""
    return _tokenised(tokenizer, messages, ranking_layout(tokenizer, k, numeric))


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

    A fitted prompt is stored by content (``prompt_cache``: template, tokenizer, budgets, query and
    passages), so building it again costs a file read.

    Raises:
        ValueError: bad candidates (see ``check_candidates``), a doc without text, a template or
            tokenizer that cannot express the ranking, or a query that alone overflows the context.
    """
    from rsd_rerank import prompt_cache

    template, numeric = _load_template(config.template)
    docs = [dict(_as_doc(d)) for d in docs]
    settings = {
        "max_passage_words": config.max_passage_words,
        "context_size": config.context_size,
        "max_tokens": max_tokens,
        "numeric": numeric,
    }
    key = prompt_cache.prompt_key(template, tokenizer, settings, query, docs)
    entry = prompt_cache.load(key)
    if entry is not None:
        try:
            return Prompt.from_json(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            # Valid JSON of another shape ({"ids": …}, []) is as damaged as a truncated file: rebuilt.
            log.warning(
                "prompt cache entry %s is not a prompt (%s: %s); building the prompt again",
                prompt_cache.entry_path(key),
                type(err).__name__,
                err,
            )
    prompt = _fitted_prompt(tokenizer, query, docs, config, max_tokens, _handler(template), numeric)
    prompt_cache.store(key, prompt.to_json())
    return prompt


def _fitted_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    docs: list[Mapping[str, Any]],
    config: PromptConfig,
    max_tokens: int | None,
    handler,
    numeric: bool,
) -> Prompt:
    """RankLLM's prompt through ``handler`` (the template's, read once by ``build_prompt``), its passages
    shrunk until prompt and ranking fit the context."""
    from rank_llm.data import Candidate, Query, Result

    k = len(docs)
    layout = ranking_layout(tokenizer, k, numeric)
    limit = config.context_size if max_tokens is None else min(config.context_size, max_tokens)
    n_ranking = len(layout.tokens(range(k)))
    result = Result(
        query=Query(text=query, qid=""),
        candidates=[Candidate(docid=i, score=0.0, doc=dict(d)) for i, d in enumerate(docs)],
    )
    full_words = [_content_words(handler, d) for d in docs]
    words = config.max_passage_words
    while True:
        messages = handler.generate_prompt(result, rank_start=0, rank_end=k, max_length=words, use_alpha=not numeric)
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
        # INFO: a run of many prompts reports its cuts once (``warn_context_cuts``), not per prompt.
        log.info("passages cut to %d words each so that the prompt fits %d tokens", words, limit)
    return replace(prompt, passage_words=words, truncated_passages=sum(n > words for n in full_words))


def warn_context_cuts(passage_words: Sequence[int | None], config: PromptConfig) -> None:
    """One warning for a run: in how many of its prompts the context forced passages below
    ``config.max_passage_words`` words (``passage_words``: each prompt's ``Prompt.passage_words``)."""
    cut = [w for w in passage_words if w is not None and w < config.max_passage_words]
    if cut:
        log.warning(
            "passages were cut below %d words to fit the context (--context-size, or the model's positions) "
            "in %d of %d prompts (down to %d words)",
            config.max_passage_words,
            len(cut),
            len(passage_words),
            min(cut),
        )


def request_prompts(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[Any],
    config: PromptConfig = PromptConfig(),
    max_tokens: int | None = None,
) -> list[Prompt]:
    """``request_prompt`` for each request, with one warning for the context cuts of them all."""
    prompts = [request_prompt(tokenizer, r, config, max_tokens) for r in requests]
    warn_context_cuts([p.passage_words for p in prompts], config)
    return prompts


def request_prompt(
    tokenizer: PreTrainedTokenizerBase,
    request: Any,
    config: PromptConfig = PromptConfig(),
    max_tokens: int | None = None,
) -> Prompt:
    """``build_prompt`` for a RankLLM ``Request`` (its query text and its candidates' docs)."""
    return build_prompt(tokenizer, request.query.text, [c.doc for c in request.candidates], config, max_tokens)
