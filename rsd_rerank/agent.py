"""The RSD agent: a relevance network over the verification matrices, and a Plackett–Luce policy.

After pass t the loop has fixed the verified prefix and the bonus item; the agent orders the rest.
A relevance network maps what the passes showed so far (``decoding.Round``) to one score per item;
the policy is Plackett–Luce over ``scores / temperature``:

    π(σ) = Π_{j ≥ f} exp(s_σj) / Σ_{l ≥ j} exp(s_σl),   f = i* + 1 (the first agent-chosen slot)

sampled exactly by Gumbel-top-k (sort ``s + Gumbel``), greedy = sort by ``s``.

Networks (``AgentConfig.network``):
- ``paper``: the paper's single Transformer layer over the stacked rows of [S_1 … S_t] (hidden = K,
  5 heads), scores = mean of the last matrix's outputs. Columns are items in identifier order, so it
  is tied to one K.
- ``equivariant``: items are the tokens. Each item's features come from its own column across slots
  and rounds, its slot in each verified ranking and whether it was accepted, so one network serves
  any K and a relabelling of the identifiers permutes its scores the same way.
- ``mlp``: the paper's "w/o LRK": an MLP on the last rejected slot's row only (tied to K).

Why an explicit temperature on raw scores: the paper's softmax-normalised scores lie in (0, 1) and
sum to 1, so with K = 20 two items differ by a few hundredths and a sampled permutation is close to
uniform (``benchmarks/fidelity.py`` reports the measured KT between samples and the greedy order
for both choices). Raw scores with a temperature keep exploration a knob.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsd_rerank.decoding import Round, consensus_scores, rejected_row
from rsd_rerank.session import accepted_length, greedy_choices

__all__ = [
    "K_TIED",
    "NETWORKS",
    "Agent",
    "AgentConfig",
    "AgentProposer",
    "free_slots_from",
    "gumbel_perturbed",
    "load_agent",
    "pl_log_prob",
    "resolve_agent",
    "save_agent",
    "tokenizer_fingerprint",
]

log = logging.getLogger(__name__)

NETWORKS = ("paper", "equivariant", "mlp")
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
    hidden: int = 64
    """Width of the equivariant network's item tokens and of the MLP's hidden layer."""
    layers: int = 2
    """Self-attention layers of the equivariant network (the paper's network has one)."""
    heads: int = 4
    """Attention heads of the equivariant network (the paper's network uses 5)."""

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"unknown agent network {self.network!r}; choose from {', '.join(NETWORKS)}")
        if self.network in K_TIED and (self.k is None or self.k < 2):
            raise ValueError(f"the {self.network!r} network is tied to one list length: give k >= 2")
        if self.network == "paper" and self.k % 5:
            raise ValueError(f"the paper's network has 5 heads over hidden = K; K = {self.k} is not a multiple of 5")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# -- policy ------------------------------------------------------------------------------------


def free_slots_from(accepted: torch.Tensor) -> torch.Tensor:
    """[B] f = i* + 1: the first slot the agent chooses (verified prefix and bonus come before it)."""
    return accepted + 1


def pl_log_prob(logits: torch.Tensor, rankings: torch.Tensor, free_from: torch.Tensor) -> torch.Tensor:
    """[B] Plackett–Luce log-probability of ``rankings`` [B, K] restricted to slots >= ``free_from`` [B].

    Slots before ``free_from`` were not the agent's choice and contribute nothing; neither do their
    items, which are absent from every later slot's normaliser.
    """
    k = rankings.shape[1]
    placed = logits.gather(1, rankings)  # [B, K] logit of the item at each slot
    # suffix log-sum-exp: normaliser of slot j is over the items at slots j..K-1
    suffix = torch.logcumsumexp(placed.flip(1), dim=1).flip(1)
    agent_slot = torch.arange(k, device=rankings.device)[None, :] >= free_from[:, None]
    return ((placed - suffix) * agent_slot).sum(dim=1)


def gumbel_perturbed(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``logits + Gumbel(0, 1)`` noise: sorting the result samples Plackett–Luce exactly (Gumbel-top-k)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return logits - torch.log(-torch.log(u.clamp(min=1e-20)))


# -- relevance networks ------------------------------------------------------------------------


def item_features(state: Round) -> torch.Tensor:
    """[B, K, F] per-item features, independent of K and of identifier order.

    Per round: the item's mean and max log-probability over all slots, its log-probability at its
    own slot and at the rejected slot, its relative slot and whether it was verified; the latest
    round and the mean over rounds are both given. Plus its first-slot log-probability and the
    consensus score (which the network can therefore reproduce from the start).
    """
    b, t, k, _ = state.matrices.shape
    m = state.matrices.clamp(min=_FLOOR)  # [B, t, slot, item]
    slot = torch.argsort(state.rankings, dim=2)  # [B, t, K] slot of each item in each round's ranking
    own = m.gather(2, slot[:, :, None, :]).squeeze(2)  # [B, t, K] log-prob of the item at its own slot
    # i* of each round: the length of the prefix whose items equal the greedy choices
    accepted = _accepted_per_round(state)  # [B, t]
    rejected = m.gather(2, accepted.clamp(max=k - 1)[:, :, None, None].expand(b, t, 1, k)).squeeze(2)
    verified = (slot < accepted[:, :, None]).float()
    per_round = torch.stack(
        [m.mean(dim=2), m.amax(dim=2), own, rejected, slot.float() / (k - 1), verified], dim=-1
    )  # [B, t, K, 6]
    scale = torch.tensor([10.0, 10.0, 10.0, 10.0, 1.0, 1.0], device=m.device)
    per_round = per_round / scale
    first = m[:, 0, 0, :, None] / 10.0
    consensus = consensus_scores(state)[..., None] / 10.0
    return torch.cat([per_round[:, -1], per_round.mean(dim=1), first, consensus], dim=-1)


def _accepted_per_round(state: Round) -> torch.Tensor:
    """[B, t] i* of every round, recomputed from the matrices (the Round stores only the latest)."""
    b, t, k, _ = state.matrices.shape
    r = state.rankings.reshape(b * t, k)
    greedy = greedy_choices(r, state.matrices.reshape(b * t, k, k))
    return accepted_length(r, greedy).reshape(b, t)


N_FEATURES = 14


class EquivariantNet(nn.Module):
    """Items as tokens: per-item features → self-attention over items (no positions) → one score each."""

    def __init__(self, config: AgentConfig):
        super().__init__()
        d = config.hidden
        self.embed = nn.Sequential(nn.Linear(N_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(d, config.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.mix = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, 1)
        # Start as the consensus proposer: learning adds to a baseline that already uses every pass.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.consensus_weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, state: Round) -> torch.Tensor:
        x = item_features(state)
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


class AgentProposer:
    """The loop's proposer for ``rsd``: greedy (sort by score), or Plackett–Luce samples for training.

    With ``generator`` the trajectories from ``greedy_rows`` on are sampled with Gumbel-top-k; the
    first ``greedy_rows`` stay greedy (RPO's reference trajectory rides in the same batch).
    """

    def __init__(self, agent: Agent, generator: torch.Generator | None = None, greedy_rows: int = 0):
        self.agent = agent
        self.generator = generator
        self.greedy_rows = greedy_rows

    @torch.no_grad()
    def scores(self, state: Round) -> torch.Tensor:
        logits = self.agent(state)
        if self.generator is None:
            return logits
        noisy = gumbel_perturbed(logits, self.generator)
        noisy[: self.greedy_rows] = logits[: self.greedy_rows]
        return noisy


# -- checkpoints -------------------------------------------------------------------------------


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token → id): equal fingerprints give equal identifier tokens."""
    if tokenizer not in _FINGERPRINTS:
        vocab = sorted(tokenizer.get_vocab().items())
        _FINGERPRINTS[tokenizer] = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return _FINGERPRINTS[tokenizer]


def save_agent(agent: Agent, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``agent.json`` (config + metadata) into ``directory``, atomically."""
    from safetensors.torch import save_file

    from rsd_rerank.runs import atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".model.safetensors.tmp"
    save_file({k: v.detach().contiguous() for k, v in agent.state_dict().items()}, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    meta = {"config": asdict(agent.config), **agent.metadata}
    atomic_write(directory / "agent.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_agent(directory: str | os.PathLike, target=None, k: int | None = None) -> Agent:
    """Load a checkpoint directory and check that it fits the target and list length it will serve.

    Raises:
        ValueError: no checkpoint there; a K-tied network asked for another K; a target whose
            tokenizer differs from the one the agent was trained with (its identifiers would be
            other tokens).

    A different target with the same tokenizer (the paper's "adaptation") loads with a warning.
    """
    fingerprint = None if target is None else tokenizer_fingerprint(target.tokenizer)
    weights = Path(directory) / "model.safetensors"
    # The file's mtime is part of the cache key: a checkpoint rewritten in the same process (training,
    # then loading) is read again, while ranking query after query reads it once.
    mtime = weights.stat().st_mtime_ns if weights.exists() else None
    return _load(str(directory), None if target is None else target.name, fingerprint, k, mtime)


@functools.lru_cache(maxsize=16)
def _load(directory: str, target_name: str | None, fingerprint: str | None, k: int | None, mtime: int | None) -> Agent:
    from safetensors.torch import load_file

    path = Path(directory)
    try:
        meta = json.loads((path / "agent.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not an agent checkpoint (agent.json + model.safetensors): {err}") from err
    config = AgentConfig(**meta.pop("config"))
    if k is not None and config.k is not None and config.k != k:
        raise ValueError(
            f"agent {path.name} ({config.network}) was trained for K = {config.k} items, the list has {k}; "
            "use an 'equivariant' agent for other list lengths"
        )
    if fingerprint is not None and meta.get("tokenizer") != fingerprint:
        raise ValueError(
            f"agent {path.name} was trained with tokenizer {meta.get('tokenizer')} ({meta.get('target')}), "
            f"the target {target_name} has tokenizer {fingerprint}: its identifier tokens differ"
        )
    if target_name is not None and meta.get("target") != target_name:
        log.warning(
            "agent %s was trained on %s; using it for %s (same tokenizer: adaptation)",
            path.name,
            meta.get("target"),
            target_name,
        )
    agent = Agent(config, meta)
    agent.load_state_dict(weights)
    return agent.eval()


def _kt_of_sample(logits: torch.Tensor, generator: torch.Generator, n: int = 200) -> float:
    """Mean Kendall tau between Plackett–Luce samples of ``logits`` [K] and their greedy order."""
    from rsd_rerank.metrics import kendall_tau

    greedy = torch.argsort(-logits)[None].expand(n, -1).numpy()
    samples = torch.argsort(-gumbel_perturbed(logits.expand(n, -1).clone(), generator), dim=1).numpy()
    return float(kendall_tau(samples, greedy).mean())


def exploration_report(logits: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """KT between samples and greedy for raw logits vs the paper's softmax-normalised scores (the number
    behind the temperature choice)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "raw_scores": _kt_of_sample(logits, g),
        "softmax_normalised": _kt_of_sample(torch.softmax(logits, dim=-1), g),
    }


BUNDLED = Path(__file__).resolve().parent / "checkpoints"
"""Agents shipped inside the package, one folder each (``README.md`` gives the command behind each)."""


def resolve_agent(agent: str | os.PathLike | None, target, k: int) -> Agent:
    """The agent for ``rsd`` on ``target`` with K items: a checkpoint directory, a bundled agent's
    name, or (None) the bundled agent trained on this target, else one trained with its tokenizer.

    Raises:
        ValueError: no such checkpoint; or no bundled agent fits the target (train one with
            ``rsd-rerank train`` and pass its directory).
    """
    if agent is None:
        agent = _default_bundled(target)
    path = Path(agent)
    if not path.is_dir():
        if not (BUNDLED / str(agent)).is_dir():
            names = ", ".join(sorted(p.name for p in BUNDLED.iterdir() if p.is_dir())) if BUNDLED.is_dir() else ""
            raise ValueError(f"no agent checkpoint {str(agent)!r}: not a directory, nor a bundled agent ({names})")
        path = BUNDLED / str(agent)
    return load_agent(path.resolve(), target=target, k=k)


@functools.cache
def _bundled_metadata() -> dict[str, dict]:
    """Each bundled agent's ``agent.json``, read once: they are package files and do not change."""
    return {
        p.name: json.loads((p / "agent.json").read_text())
        for p in sorted(BUNDLED.glob("*"))
        if (p / "agent.json").exists()
    }


def _default_bundled(target) -> str:
    metas = _bundled_metadata()
    for name, meta in metas.items():
        if meta.get("target") == target.name:
            return name
    fingerprint = tokenizer_fingerprint(target.tokenizer)
    for name, meta in metas.items():
        if meta.get("tokenizer") == fingerprint:
            return name
    raise ValueError(
        f"no bundled agent was trained on {target.name} or its tokenizer; train one with "
        "`rsd-rerank train --model … --out DIR` and pass --agent DIR"
    )
