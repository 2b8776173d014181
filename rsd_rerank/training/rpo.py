"""Stage I (supervised warm start) and Stage II (RPO) losses of the paper's Algorithm 1.

RPO, per query: one greedy reference trajectory and G Plackett–Luce samples of T rounds, all in one
batch (one LLM forward per round). Return = similarity of σ_T to the target; advantage
A_i = R_i − R_ref (or the group-average variant A_i = R_i − mean_{j≠i} R_j, the paper's "w/o RA");

    loss = −(1/G) Σ_i (1/T) Σ_t A_i · log π_θ(σ_t^(i) | s_<t^(i))  +  β · KL(π_θ(·|s) ‖ π_ref(·|s))

with log π over the agent-chosen slots only, and KL between the two policies' first-choice
distributions over the free items, averaged over every state of every trajectory.
"""

from __future__ import annotations

import torch

from rsd_rerank.agent import Agent, free_slots_from, pl_log_prob
from rsd_rerank.decoding import Decoded
from rsd_rerank.metrics import spearman_rho
from rsd_rerank.proposers import Round

__all__ = ["ADVANTAGES", "advantages", "kl_to_reference", "rewards", "rpo_loss", "supervised_loss"]

ADVANTAGES = ("reference", "group")


def rewards(rankings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] Spearman rho of each final ranking [B, K] to the target [K]."""
    return torch.as_tensor(spearman_rho(rankings.cpu().numpy(), target.expand_as(rankings).cpu().numpy()))


def advantages(returns: torch.Tensor, kind: str) -> torch.Tensor:
    """[G] advantages of the sampled trajectories; ``returns`` [1 + G] has the greedy reference first."""
    if kind == "reference":
        return returns[1:] - returns[0]
    if kind == "group":
        sampled = returns[1:]
        g = sampled.shape[0]
        return sampled - (sampled.sum() - sampled) / max(g - 1, 1)
    raise ValueError(f"unknown advantage {kind!r}; choose from {', '.join(ADVANTAGES)}")


def _free_mask(state: Round, rankings: torch.Tensor) -> torch.Tensor:
    """[B, K] items the agent placed (slots >= i* + 1) in ``rankings``."""
    slot = torch.argsort(rankings, dim=1)
    return slot >= free_slots_from(state.latest_accepted)[:, None]


def kl_to_reference(logits: torch.Tensor, reference: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """[B] KL(softmax(logits) ‖ softmax(reference)) over the free items (0 where at most one is free)."""
    # A finite mask: with -inf, (log p - log q) at fixed items is nan and its gradient leaks through `where`.
    log_p = torch.log_softmax(logits.masked_fill(~free, -1e9), dim=1)
    log_q = torch.log_softmax(reference.masked_fill(~free, -1e9), dim=1)
    terms = torch.where(free, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=1) * (free.sum(dim=1) > 1)


def rpo_loss(
    agent: Agent, reference: Agent, decoded: Decoded, target: torch.Tensor, advantage: str, beta: float, budget: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The RPO loss of one query's batch (row 0 greedy reference, rows 1.. sampled) and its diagnostics."""
    device = decoded.rankings.device
    returns = rewards(decoded.rankings, target)
    adv = advantages(returns, advantage).to(device=device, dtype=torch.float32)
    policy_term = torch.zeros((), device=device)
    kl_term = torch.zeros((), device=device)
    for step in decoded.steps:
        logits = agent(step.state)
        free_from = free_slots_from(step.state.latest_accepted)
        log_p = pl_log_prob(logits, step.rankings, free_from)[1:]
        policy_term = policy_term - (adv * log_p).mean() / budget
        with torch.no_grad():
            ref_logits = reference(step.state)
        kl_term = kl_term + kl_to_reference(logits, ref_logits, _free_mask(step.state, step.rankings)).mean() / budget
    loss = policy_term + beta * kl_term
    stats = {"reward_ref": float(returns[0]), "reward_sampled": float(returns[1:].mean()), "kl": kl_term.item()}
    return loss, stats


def supervised_loss(
    agent: Agent, state: Round, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Stage I: the negative log-likelihood of the target rankings [B, K] over the agent's slots, per
    free slot, averaged over states (``weight`` [B]: a weighted average).

    The verified prefix and the bonus item of every state are the target's own (Theorem 1), so the
    target's tail after slot i* is exactly what the agent should have proposed.
    """
    logits = agent(state)
    free_from = free_slots_from(state.latest_accepted)
    n_free = (target.shape[1] - free_from).clamp(min=1)
    nll = -pl_log_prob(logits, target, free_from) / n_free
    return nll.mean() if weight is None else (weight * nll).sum() / weight.sum()
