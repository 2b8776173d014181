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
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rsd_rerank.decoding import decode
from rsd_rerank.files import replacing
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.proposers import ConsensusProposer
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, cache_dir, tokenizer_fingerprint, weights_fingerprint

__all__ = ["CachedQuery", "target_fingerprint", "cached_queries"]


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


def _compute(target: Target, request, prompt: PromptConfig, budget: int) -> dict[str, torch.Tensor]:
    session = TargetSession.from_request(target, request, prompt)
    decoded = decode(session, ConsensusProposer(), budget)
    k = session.k
    if decoded.steps:
        last = decoded.steps[-1].state
        rankings, matrices, accepted = last.rankings[0], last.matrices[0], last.accepted[0]
    else:  # the STD order verified whole: the proposer never acted, nothing to learn from
        rankings, matrices = torch.empty(0, k, dtype=torch.long), torch.empty(0, k, k)
        accepted = torch.empty(0, dtype=torch.long)
    return {
        "target": torch.tensor(session.greedy_ranking()),
        "rankings": rankings.contiguous().cpu(),
        "matrices": matrices.contiguous().cpu(),
        "accepted": accepted.contiguous().cpu(),
    }


def cached_queries(
    target: Target, requests: list, prompt: PromptConfig, budget: int, directory: str | os.PathLike | None = None
) -> list[CachedQuery]:
    """Every request's cache entry, in request order, computing the missing ones (tqdm; resumable after a kill).

    Raises:
        ValueError: a request with fewer than 2 candidates.
    """
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
    out = []
    for request in tqdm(requests, desc=f"target cache ({target.name})", unit="query"):
        path = root / f"{_key(fingerprint, prompt, budget, request)}.safetensors"
        if not path.exists():
            with replacing(path) as tmp:
                entry = _compute(target, request, prompt, budget)
                save_file(entry, str(tmp), metadata={"qid": str(request.query.qid)})
        entry = load_file(str(path))
        out.append(
            CachedQuery(
                str(request.query.qid), entry["target"], entry["rankings"], entry["matrices"], entry["accepted"]
            )
        )
    return out
