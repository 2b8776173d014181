"""Similarity of predicted to target rankings, vectorised over many queries at once.

Rankings are arrays [N, K] of item indices, best first (``ranking[q, r]`` = item at rank r); every
row a permutation of 0..K-1. Definitions follow the paper (no ties):

- Kendall tau  KT = 1 - 4·D / (K(K-1)),   D = discordant pairs       (higher is better)
- Spearman rho SR = 1 - 6·Σ d² / (K(K²-1)), d = rank differences      (higher is better)
- Footrule     FD = Σ |r1(i) - r2(i)|                                  (lower is better)
- Kemeny       KD = D                                                  (lower is better)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = [
    "MEASURES",
    "Measure",
    "bootstrap_mean",
    "footrule",
    "kemeny",
    "kendall_tau",
    "positions",
    "similarity",
    "spearman_rho",
]


def positions(rankings: np.ndarray) -> np.ndarray:
    """[N, K] rank of each item: the inverse permutation of each row.

    Raises:
        ValueError: not a 2-D array of permutations of 0..K-1.
    """
    r = np.asarray(rankings)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or not np.array_equal(np.sort(r, axis=1), np.broadcast_to(np.arange(r.shape[1]), r.shape)):
        raise ValueError("rankings must be an [N, K] array whose rows are permutations of 0..K-1")
    return np.argsort(r, axis=1)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = positions(pred), positions(target)
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and target {t.shape} rankings differ in shape")
    return p, t


def kemeny(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N] number of item pairs the two rankings order differently."""
    p, t = _pair(pred, target)
    dp = np.sign(p[:, :, None] - p[:, None, :])
    dt = np.sign(t[:, :, None] - t[:, None, :])
    return (dp * dt < 0).sum(axis=(1, 2)) // 2


def kendall_tau(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N] Kendall tau in [-1, 1]; 1 for K = 1."""
    k = np.asarray(target).shape[-1]
    if k < 2:
        return np.ones(positions(target).shape[0])
    return 1.0 - 4.0 * kemeny(pred, target) / (k * (k - 1))


def spearman_rho(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N] Spearman rho in [-1, 1]; 1 for K = 1."""
    p, t = _pair(pred, target)
    k = p.shape[1]
    if k < 2:
        return np.ones(p.shape[0])
    return 1.0 - 6.0 * ((p - t) ** 2).sum(axis=1) / (k * (k * k - 1))


def footrule(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N] Spearman's footrule distance Σ|r1 - r2|."""
    p, t = _pair(pred, target)
    return np.abs(p - t).sum(axis=1)


class Measure(NamedTuple):
    """A fidelity measure: per-query values [N] of predicted vs target rankings, and its direction."""

    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    higher_is_better: bool


MEASURES: dict[str, Measure] = {
    "KT": Measure(kendall_tau, True),
    "SR": Measure(spearman_rho, True),
    "FD": Measure(footrule, False),
    "KD": Measure(kemeny, False),
}
"""The fidelity measures every table reports, in the order they are reported."""


def similarity(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Means over queries of every measure in ``MEASURES``."""
    return {name: float(m.fn(pred, target).mean()) for name, m in MEASURES.items()}


def bootstrap_mean(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    """Mean of per-claim ``values`` and its 95% percentile-bootstrap interval over claims."""
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
