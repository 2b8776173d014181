"""The data and the loss of the shipped realistic target, ``smollm2-reranker``: SmolLM2-135M-Instruct
fine-tuned as a listwise reranker on SciFact training claims (``finetune --method reranker``).

What makes it read its passages rather than learn a letter habit (``shared/targets.md`` says why the
first recipe, one epoch of next-token SFT, did not):

- **Candidates reshuffled every epoch** (seeded by seed, epoch and qid), so identifier order carries no
  signal and every passage meets every position equally often in expectation.
- **A content teacher.** ``wordllama``: the cosine similarity of the claim and the passage *as the
  prompt shows it* under ``wordllama``'s 256-d static embeddings (in its wheel, no hub). ``fusion``:
  reciprocal-rank fusion (k = 60) of that order with the request's own order (BM25 on the whole
  document). SciFact ships no training qrels, so "relevant passages first" is not available offline;
  BM25 is the strongest content signal there is, and fusing it with a semantic order keeps the
  teacher from being the request order itself (a target taught BM25's order alone would copy the
  identifier order of BM25-ordered requests and be easy for every decoder).
- **A dense ranking loss** (``listmle``): Plackett–Luce over the not-yet-ranked identifiers' logits at
  every slot of the teacher's ranking (PE-Rank's ListMLE), beside ``lm_weight`` × the next-token
  loss on the whole answer to keep the format. Next-token SFT spends 3 of 4 answer tokens on format
  and normalises over the vocabulary.
- **Short lists first** (``list_sizes``): epoch e reranks a seeded random subset of
  ``list_sizes[e]`` candidates (the last size repeats); a 5-passage prompt costs about a quarter of a
  20-passage one.
- **Easy lists first** (``foreign``): in epoch e, ``foreign[e]`` of those candidates are passages from
  other claims' lists, taught last. Telling a claim's own BM25 candidates apart (all on its topic)
  is a fine lexical task on which a 135M model's loss stayed at chance for 425 steps (the first try
  of this recipe); whether a passage is on the claim's topic at all is a coarse one that teaches the
  identifier-to-passage binding first. The ranking loss stops where only foreign passages are left
  (their order is arbitrary).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import torch

from rsd_rerank.prompt import Prompt, PromptConfig, RankingLayout, request_prompt, request_prompts, shown_passages

__all__ = [
    "LOSSES",
    "TEACHERS",
    "RerankerExamples",
    "cue_epochs",
    "foreign_counts",
    "list_sizes",
    "listmle_loss",
    "order_by_score",
    "own_among_foreign",
    "shuffled_requests",
    "similarity_rankings",
    "teacher_scores",
]

TEACHERS = ("wordllama", "fusion")
"""The content orders a reranker can be taught (module docstring)."""
LOSSES = ("sft", "listmle")
"""``sft``: next-token loss on the whole answer; ``listmle``: Plackett–Luce on the identifiers + ``lm_weight`` × sft."""
RRF_K = 60
"""Reciprocal-rank fusion's constant (Cormack et al. 2009)."""


def shuffled_requests(requests: Sequence, seed: int, epoch: int = 0) -> list:
    """Each request with its candidates in a seeded random order, a function of seed, epoch and qid
    (epoch 0 keeps the first recipe's orders)."""
    out = []
    for request in requests:
        order = list(range(len(request.candidates)))
        key = f"{seed}:{request.query.qid}" if epoch == 0 else f"{seed}:{epoch}:{request.query.qid}"
        random.Random(key).shuffle(order)
        out.append(dataclasses.replace(request, candidates=[request.candidates[i] for i in order]))
    return out


@cache
def _wordllama():
    """wordllama's bundled 256-d model, loaded from its own wheel (its default lookup would try the network)."""
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as err:
        raise ValueError(
            "finetune --method reranker needs the wordllama package (its teacher); pip install wordllama"
        ) from err
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def _similarities(query: str, texts: Sequence[str]) -> list[float]:
    return [score for _, score in _wordllama().rank(query, list(texts), sort=False)]


def order_by_score(scores: Sequence[float]) -> list[int]:
    """Indices by decreasing score (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def similarity_rankings(query_texts: Sequence[str], passages: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Per query, its passages' indices by decreasing wordllama cosine similarity to the query (ties: lower index first)."""
    return [
        torch.tensor(order_by_score(_similarities(query, texts)))
        for query, texts in zip(query_texts, passages, strict=True)
    ]


def _ranks(scores: Sequence[float]) -> list[int]:
    """0-based rank of each score, highest first (ties: lower index first)."""
    order = order_by_score(scores)
    ranks = [0] * len(scores)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def teacher_scores(tokenizer, requests: Sequence, prompt: PromptConfig, teacher: str) -> list[dict[str, float]]:
    """Per request, a score per candidate docid (higher: ranked earlier) under ``teacher``.

    The requests' own candidate order is taken as their retriever's (BM25) ranking.
    """
    if teacher not in TEACHERS:
        raise ValueError(f"--teacher must be one of {', '.join(TEACHERS)}, not {teacher!r}")
    prompts = request_prompts(tokenizer, requests, prompt)
    out = []
    for request, p in zip(requests, prompts, strict=True):
        docids = [str(c.docid) for c in request.candidates]
        similarity = _similarities(request.query.text, shown_passages(request, p, prompt))
        if teacher == "wordllama":
            scores = similarity
        else:
            scores = [1 / (RRF_K + 1 + r) + 1 / (RRF_K + 1 + i) for i, r in enumerate(_ranks(similarity))]
        out.append(dict(zip(docids, scores, strict=True)))
    return out


def per_epoch(text: str, option: str, minimum: int) -> tuple[int, ...]:
    """``"5,10,20"`` → (5, 10, 20); ``""`` → () (``option`` names the flag in errors).

    Raises:
        ValueError: not comma-separated integers >= ``minimum``.
    """
    if not text.strip():
        return ()
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError as err:
        raise ValueError(
            f"{option} takes comma-separated whole numbers, one per epoch (e.g. 5,10,20), not {text!r}"
        ) from err
    if any(v < minimum for v in values):
        raise ValueError(f"{option}: every value must be >= {minimum}, got {text!r}")
    return values


def list_sizes(text: str) -> tuple[int, ...]:
    """``--list-sizes``: candidates per list in each epoch (the last repeats); () reranks whole requests."""
    return per_epoch(text, "--list-sizes", 2)


def foreign_counts(text: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """``--foreign``: other claims' passages per list in each epoch (the last repeats; needs ``--list-sizes``).

    Raises:
        ValueError: a count that leaves none of the claim's own candidates in its epoch's list.
    """
    counts = per_epoch(text, "--foreign", 0)
    if counts and not sizes:
        raise ValueError("--foreign needs --list-sizes (the lists it puts other claims' passages in)")
    for e, n in enumerate(counts):
        size = sizes[min(e, len(sizes) - 1)]
        if size - n < 1:
            raise ValueError(
                f"--foreign {text!r}: epoch {e + 1} keeps {size - n} of a claim's own candidates (needs >= 1)"
            )
    return counts


def cue_epochs(text: str) -> tuple[int, ...]:
    """``--cue``: 1 (the teacher's first passage starts with the claim) or 0 per epoch (the last repeats).

    Raises:
        ValueError: a value other than 0 or 1.
    """
    values = per_epoch(text, "--cue", 0)
    if any(v > 1 for v in values):
        raise ValueError(f"--cue takes 1 (cue) or 0 (none) per epoch, e.g. 1,0; got {text!r}")
    return values


def _with_claim_first(candidate: Any, claim: str) -> Any:
    """``candidate`` whose passage text starts with ``claim`` (the first text key RankLLM's prompt reads)."""
    doc = dict(candidate.doc)
    key = next((k for k in ("text", "segment", "contents", "content", "body", "passage") if k in doc), "text")
    doc[key] = f"{claim} {doc.get(key, '')}"
    return dataclasses.replace(candidate, doc=doc)


class RerankerExamples:
    """Epoch e's i-th training example: a request's candidates reshuffled for e (and cut to e's list
    size), its prompt, and the teacher's ranking of them (indices into the shuffled list)."""

    def __init__(self, tokenizer, requests: Sequence, prompt: PromptConfig, config, max_tokens: int | None):
        self.tokenizer, self.requests, self.prompt = tokenizer, list(requests), prompt
        self.seed, self.sizes, self.max_tokens = config.seed, list_sizes(config.list_sizes), max_tokens
        self.foreign = foreign_counts(config.foreign, self.sizes)
        self.cue = cue_epochs(config.cue)
        self.scores = teacher_scores(tokenizer, self.requests, prompt, config.teacher)
        self._epoch, self._shuffled = -1, []

    def __len__(self) -> int:
        return len(self.requests)

    def fingerprint(self) -> str:
        """What the examples are a function of (a resumed run must see the same)."""
        key = [
            asdict(self.prompt),
            [[r.query.qid, r.query.text, [str(c.docid) for c in r.candidates]] for r in self.requests],
        ]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]

    def single_token(self) -> bool:
        """Every example's identifiers are one token (the longest list decides)."""
        return all(
            request_prompt(self.tokenizer, r, self.prompt, self.max_tokens).layout.single_token
            for r in self.requests[:1]
        )

    def training_list(self, epoch: int, i: int) -> tuple[Any, int]:
        """Request i as epoch ``epoch`` shows it (reshuffled, cut to the epoch's list size, other claims'
        passages mixed in) and how many of its candidates are its own."""
        if epoch != self._epoch:
            self._epoch, self._shuffled = epoch, shuffled_requests(self.requests, self.seed, epoch)
        request = self._shuffled[i]
        if not self.sizes:
            return request, len(request.candidates)
        size = self.sizes[min(epoch, len(self.sizes) - 1)]
        n_foreign = self.foreign[min(epoch, len(self.foreign) - 1)] if self.foreign else 0
        own = request.candidates[: size - n_foreign]
        if n_foreign:
            # Among other claims' passages the claim's own are its teacher's best, not any of its top 20:
            # a weak own passage beside foreign ones is noise, not a lesson in matching (the probes').
            best = sorted(request.candidates, key=lambda c: -self.scores[i].get(str(c.docid), 0.0))
            own = best[: size - n_foreign]
        rng = random.Random(f"{self.seed}:{epoch}:{request.query.qid}:foreign")
        others = [j for j in range(len(self.requests)) if j != i]
        taken = {str(c.docid) for c in self.requests[i].candidates}
        foreign = []
        while len(foreign) < n_foreign:
            c = rng.choice(self._shuffled[rng.choice(others)].candidates)
            if str(c.docid) not in taken:
                taken.add(str(c.docid))
                foreign.append(c)
        mixed = list(own) + foreign
        rng.shuffle(mixed)
        return dataclasses.replace(request, candidates=mixed), len(own)

    def example(self, epoch: int, i: int) -> tuple[Prompt, list[int], int]:
        """The prompt, the teacher's ranking and how many of its leading slots the ranking loss scores."""
        request, n_own = self.training_list(epoch, i)
        scores = self.scores[i]
        docids = [str(c.docid) for c in request.candidates]
        # Foreign passages go last, in their list order; the loss stops where only they are left.
        sigma = sorted(range(len(docids)), key=lambda j: (docids[j] not in scores, -scores.get(docids[j], 0.0), j))
        if self.cue and self.cue[min(epoch, len(self.cue) - 1)]:
            candidates = list(request.candidates)
            candidates[sigma[0]] = _with_claim_first(candidates[sigma[0]], request.query.text)
            request = dataclasses.replace(request, candidates=candidates)
        return request_prompt(self.tokenizer, request, self.prompt, self.max_tokens), sigma, n_own


def own_among_foreign(requests: Sequence, k: int = 5, seed: int = 0) -> list[tuple[Any, int]]:
    """Per request: a list of its first candidate and ``k`` − 1 passages of other requests, in a seeded
    order, and where its own passage sits. The coarsest content check: a model that reads puts its
    claim's own passage first far above chance (1/k)."""
    rng = random.Random(f"{seed}:own-among-foreign")
    out = []
    for i, request in enumerate(requests):
        others = [c for j, r in enumerate(requests) if j != i for c in r.candidates]
        taken = {str(c.docid) for c in request.candidates}
        foreign = [c for c in rng.sample(others, min(len(others), 4 * k)) if str(c.docid) not in taken][: k - 1]
        mixed = [request.candidates[0], *foreign]
        order = list(range(len(mixed)))
        rng.shuffle(order)
        out.append((dataclasses.replace(request, candidates=[mixed[o] for o in order]), order.index(0)))
    return out


def identifier_positions(layout: RankingLayout, k: int) -> list[int]:
    """Index of slot s's identifier token within ``layout.tokens(ranking)[len(layout.head):]`` (single-token layouts)."""
    assert layout.single_token
    return [s * (len(layout.sep) + 1) for s in range(k)]


def listmle_loss(
    logits: torch.Tensor, layout: RankingLayout, sigma: Sequence[int], scored: int | None = None
) -> torch.Tensor:
    """Plackett–Luce negative log-likelihood of ``sigma`` from the identifier logits at each slot.

    ``logits[j]`` predicts token j of the ranking after the layout's head (the prompt's last position
    on). At slot s the items placed before it are masked, so each slot is a softmax over the
    not-yet-ranked identifiers; the last slot (one item left) carries no information and is skipped,
    and so are the slots from ``scored`` on (an arbitrary order of the rest).
    """
    k = len(sigma)
    at = torch.tensor(identifier_positions(layout, k), device=logits.device)
    ids = torch.tensor([layout.first_ids, *[layout.later_ids] * (k - 1)], device=logits.device)  # [K, K]
    scores = logits[at[:, None], ids]  # [slot, item]
    placed = torch.zeros(k, k, dtype=torch.bool, device=logits.device)
    items = torch.tensor(list(sigma), device=logits.device)
    for s in range(1, k):
        placed[s] = placed[s - 1]
        placed[s, items[s - 1]] = True
    log_p = torch.log_softmax(scores.masked_fill(placed, float("-inf")), dim=-1)
    n = min(k - 1, k if scored is None else scored)
    return -log_p[torch.arange(n), items[:n]].mean()
