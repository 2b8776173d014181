"""Relevance networks of the RSD agent: what the verification passes showed so far → one score per item.

- ``paper``: the paper's single Transformer layer over the stacked rows of [S_1 … S_t] (hidden = K,
  5 heads), scores = mean of the last matrix's outputs. Columns are items in identifier order, so it
  is tied to one K.
- ``equivariant``: items are the tokens. Each item's features come from its own column across slots
  and rounds, its slot in each verified ranking and whether it was accepted, so one network serves
  any K and a relabelling of the identifiers permutes its scores the same way.
- ``mlp``: the paper's "w/o LRK": an MLP on the last rejected slot's row only (tied to K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.proposers import Round, consensus_scores, jacobi_slots, rejected_row

__all__ = ["FEATURES", "K_TIED", "NETWORKS", "Agent", "AgentConfig", "item_features"]

NETWORKS = ("paper", "equivariant", "mlp")
FEATURES = {"rows": 14, "jacobi": 16}
"""The equivariant network's item features, and how many: ``rows`` (summaries of the rows, the slots
and the consensus score), ``jacobi`` (also each item's slot in one Jacobi step of the latest pass and
its log-probability there: what PDM reads)."""
K_TIED = ("paper", "mlp")
"""Networks whose inputs or outputs have one slot per identifier: they serve a single list length K."""

# Log-probabilities of a near-impossible identifier can reach -1e2 and beyond; past -30 the value
# carries no ranking information and would only dominate the inputs' scale.
_FLOOR = -30.0


@dataclass(frozen=True)
class AgentConfig:
    """Architecture and policy of an agent (the source of defaults; stored in every checkpoint)."""

    network: str = "equivariant"
    """One of ``NETWORKS``."""
    k: int | None = None
    """Items per list: required by ``paper`` and ``mlp``, None (any K) for ``equivariant``."""
    temperature: float = 1.0
    """Plackett–Luce logits are ``scores / temperature``."""
    hidden: int = bounded(64, 1)
    """Width of the equivariant network's item tokens and of the MLP's hidden layer."""
    layers: int = bounded(2, 1)
    """Self-attention layers of the equivariant network (the paper's network has one)."""
    heads: int = bounded(4, 1)
    """Attention heads of the equivariant network (the paper's network uses 5)."""
    features: str = "jacobi"
    """The equivariant network's item features: jacobi (each item's slot and log-probability in one Jacobi step of the latest pass, what PDM reads, besides the row summaries) or rows (summaries of every row seen only; checkpoints that name no features have these)."""

    def __post_init__(self):
        check_ranges(self)
        if self.network not in NETWORKS:
            raise ValueError(f"unknown agent network {self.network!r}; choose from {', '.join(NETWORKS)}")
        if self.features not in FEATURES:
            raise ValueError(f"unknown agent features {self.features!r}; choose from {', '.join(FEATURES)}")
        if self.network in K_TIED and (self.k is None or self.k < 2):
            raise ValueError(f"the {self.network!r} network is tied to one list length: give k >= 2")
        if self.network == "paper" and self.k % 5:
            raise ValueError(f"the paper's network has 5 heads over hidden = K; K = {self.k} is not a multiple of 5")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# -- relevance networks ------------------------------------------------------------------------


def item_features(state: Round, features: str = "rows") -> torch.Tensor:
    """[B, K, F] per-item features, independent of K and of identifier order (F = ``FEATURES[features]``).

    Per round: the item's mean and max log-probability over all slots, its log-probability at its
    own slot and at the rejected slot, its relative slot and whether it was verified; the latest
    round and the mean over rounds are both given. Plus its first-slot log-probability and the
    consensus score (which the network can therefore reproduce from the start). ``jacobi`` adds the
    item's relative slot in one Jacobi step of the latest pass and its log-probability there (the
    row of that slot given the pass's teacher-forced prefix): with them a network can place every
    item as PDM would, each from its own row in place.
    """
    b, t, k, _ = state.matrices.shape
    m = state.matrices.clamp(min=_FLOOR)  # [B, t, slot, item]
    slot = torch.argsort(state.rankings, dim=2)  # [B, t, K] slot of each item in each round's ranking
    own = m.gather(2, slot[:, :, None, :]).squeeze(2)  # [B, t, K] log-prob of the item at its own slot
    accepted = state.accepted  # [B, t] i* of each round
    rejected = m.gather(2, accepted.clamp(max=k - 1)[:, :, None, None].expand(b, t, 1, k)).squeeze(2)
    verified = (slot < accepted[:, :, None]).float()
    per_round = torch.stack(
        [m.mean(dim=2), m.amax(dim=2), own, rejected, slot.float() / (k - 1), verified], dim=-1
    )  # [B, t, K, 6]
    scale = torch.tensor([10.0, 10.0, 10.0, 10.0, 1.0, 1.0], device=m.device)
    per_round = per_round / scale
    first = m[:, 0, 0, :, None] / 10.0
    consensus = consensus_scores(state)[..., None] / 10.0
    out = [per_round[:, -1], per_round.mean(dim=1), first, consensus]
    if features == "jacobi":
        slots = jacobi_slots(state)  # [B, K]
        there = m[:, -1].gather(1, slots[:, None, :]).squeeze(1)  # [B, K] latest[b, slot of item i, i]
        out.append(torch.stack([slots.float() / (k - 1), there / 10.0], dim=-1))
    return torch.cat(out, dim=-1)


class EquivariantNet(nn.Module):
    """Items as tokens: per-item features → self-attention over items (no positions) → one score each."""

    def __init__(self, config: AgentConfig):
        super().__init__()
        d = config.hidden
        self.features = config.features
        self.embed = nn.Sequential(nn.Linear(FEATURES[config.features], d), nn.GELU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(d, config.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.mix = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, 1)
        # Start as the consensus proposer: learning adds to a baseline that already uses every pass.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.consensus_weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, state: Round) -> torch.Tensor:
        x = item_features(state, self.features)
        return self.out(self.mix(self.embed(x))).squeeze(-1) + self.consensus_weight * consensus_scores(state)


class PaperNet(nn.Module):
    """The paper's relevance network: one Transformer layer over the rows of all matrices so far."""

    def __init__(self, config: AgentConfig):
        super().__init__()
        self.k = config.k
        self.layer = nn.TransformerEncoderLayer(config.k, 5, 4 * config.k, dropout=0.0, batch_first=True)

    def forward(self, state: Round) -> torch.Tensor:
        b, t, k, _ = state.matrices.shape
        if k != self.k:
            raise ValueError(f"this 'paper' agent ranks K = {self.k} items, the list has {k}")
        rows = state.matrices.clamp(min=_FLOOR).reshape(b, t * k, k)
        z = self.layer(rows)
        return z[:, -k:].mean(dim=1)  # mean of Z_{t-1}, the last matrix's rows


class MLPNet(nn.Module):
    """ "w/o LRK": an MLP on the last rejected slot's row only, added to that row (so it starts as GSD)."""

    def __init__(self, config: AgentConfig):
        super().__init__()
        self.k = config.k
        self.mlp = nn.Sequential(nn.Linear(config.k, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.k))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, state: Round) -> torch.Tensor:
        k = state.matrices.shape[-1]
        if k != self.k:
            raise ValueError(f"this 'mlp' agent ranks K = {self.k} items, the list has {k}")
        row = rejected_row(state).clamp(min=_FLOOR)
        return row + self.mlp(row / 10.0)


_NETS = {"paper": PaperNet, "equivariant": EquivariantNet, "mlp": MLPNet}


class Agent(nn.Module):
    """A relevance network with its policy settings and the metadata its checkpoint carries.

    ``agent(state)`` gives Plackett–Luce logits [B, K] (scores / temperature).
    """

    def __init__(self, config: AgentConfig, metadata: dict[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.metadata = dict(metadata or {})
        self.net = _NETS[config.network](config)

    def forward(self, state: Round) -> torch.Tensor:
        return self.net(state) / self.config.temperature
