"""Target rankings and Stage I states, computed once per (model, prompt, query, candidates) and kept on disk.

Each query's entry is one safetensors file written atomically, named by a hash of everything that
determines it (the target's fingerprint covers every weight), so a killed run resumes where it
stopped and a changed prompt or model never reads a stale entry. An entry holds the exact target
σ_tr (constrained greedy decoding) and the states of one consensus trajectory of T passes
(rankings, matrices, i*): Stage I's supervised examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rsd_rerank.decoding import decode_many
from rsd_rerank.files import replacing
from rsd_rerank.prompt import PromptConfig, request_prompts
from rsd_rerank.proposers import ConsensusProposer
from rsd_rerank.runs import BatchConfig
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, cache_dir, tokenizer_fingerprint, weights_fingerprint

__all__ = ["CachedQuery", "target_fingerprint", "cached_queries"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedQuery:
    """One training query: its target ranking and the passes of a consensus trajectory."""

    qid: str
    target: torch.Tensor
    """[K] σ_tr, the LLM's constrained greedy ranking."""
    rankings: torch.Tensor
    """[t, K] the rankings verified in passes 1..t where the proposer then acted (t ≤ T)."""
    matrices: torch.Tensor
    """[t, K, K] their verification matrices."""
    accepted: torch.Tensor
    """[t] i* of each of those passes."""


def target_fingerprint(target: Target) -> str:
    """Name, tokenizer and a digest of the config and every weight: what makes the target."""
    return f"{target.name}|{tokenizer_fingerprint(target.tokenizer)}|{weights_fingerprint(target.model)}"


def _key(fingerprint: str, prompt: PromptConfig, budget: int, request) -> str:
    payload = {
        "target": fingerprint,
        "prompt": asdict(prompt),
        "budget": budget,
        "query": request.query.text,
        "candidates": [[str(c.docid), c.doc] for c in request.candidates],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _compute(target: Target, requests: list, prompt: PromptConfig, budget: int) -> list[dict[str, torch.Tensor]]:
    """The entries of ``requests``, computed in one batched session."""
    session = TargetSession.from_prompts(
        target,
        request_prompts(target.tokenizer, requests, prompt, target.max_positions),
    )
    targets = session.greedy_rankings()
    decoded = decode_many(session, dict.fromkeys(range(len(requests)), ConsensusProposer()), budget)
    entries = []
    for q, d in decoded.items():
        k = session.ks[q]
        if d.steps:
            last = d.steps[-1].state
            rankings, matrices, accepted = last.rankings[0], last.matrices[0], last.accepted[0]
        else:  # the STD order verified whole: the proposer never acted, nothing to learn from
            rankings, matrices = torch.empty(0, k, dtype=torch.long), torch.empty(0, k, k)
            accepted = torch.empty(0, dtype=torch.long)
        entries.append(
            {
                "target": torch.tensor(targets[q]),
                "rankings": rankings.contiguous().cpu(),
                "matrices": matrices.contiguous().cpu(),
                "accepted": accepted.contiguous().cpu(),
            }
        )
    return entries


def cached_queries(
    target: Target,
    requests: list,
    prompt: PromptConfig,
    budget: int,
    directory: str | os.PathLike | None = None,
    batching: BatchConfig = BatchConfig(),
) -> list[CachedQuery]:
    """Every request's cache entry, in request order, computing the missing ones in batches (tqdm;
    resumable after a kill: each entry is its own file, written atomically).

    Raises:
        ValueError: a request with fewer than 2 candidates.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    fingerprint = target_fingerprint(target)
    root = Path(directory) if directory is not None else cache_dir() / "targets"
    root = root / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    root.mkdir(parents=True, exist_ok=True)
    short = [str(r.query.qid) for r in requests if len(r.candidates) < 2]
    if short:
        raise ValueError(
            f"requests with fewer than 2 candidates have no ranking to learn: qids {', '.join(short[:10])}"
        )
    paths = [root / f"{_key(fingerprint, prompt, budget, r)}.safetensors" for r in requests]
    missing = list(dict.fromkeys(i for i, path in enumerate(paths) if not path.exists()))
    bar = tqdm(total=len(missing), desc=f"target cache ({target.name})", unit="query")
    for start in range(0, len(missing), batching.batch_size):
        chunk = [i for i in missing[start : start + batching.batch_size] if not paths[i].exists()]
        for i, entry in zip(
            chunk, _compute(target, [requests[i] for i in chunk], prompt, budget) if chunk else [], strict=True
        ):
            with replacing(paths[i]) as tmp:
                save_file(entry, str(tmp), metadata={"qid": str(requests[i].query.qid)})
        bar.update(len(missing[start : start + batching.batch_size]))
    bar.close()
    out = []
    for request, path in zip(requests, paths, strict=True):
        try:
            entry = load_file(str(path))
            entry = {name: entry[name] for name in ("target", "rankings", "matrices", "accepted")}
        except (OSError, KeyError, SafetensorError) as err:
            # Safe to redo: an entry is a pure function of its key. (Writes are atomic, so only an
            # outside hand can have cut or changed it.)
            log.warning("target cache entry %s is unreadable (%s); computing it again", path, err)
            (entry,) = _compute(target, [request], prompt, budget)
            with replacing(path) as tmp:
                save_file(entry, str(tmp), metadata={"qid": str(request.query.qid)})
        out.append(
            CachedQuery(
                str(request.query.qid), entry["target"], entry["rankings"], entry["matrices"], entry["accepted"]
            )
        )
    return out
