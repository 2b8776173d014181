"""The RSD agent's policy: Plackett–Luce over ``scores / temperature``, and the loop's ``rsd`` proposer.

After pass t the loop has fixed the verified prefix and the bonus item; the agent orders the rest:

    π(σ) = Π_{j ≥ f} exp(s_σj) / Σ_{l ≥ j} exp(s_σl),   f = i* + 1 (the first agent-chosen slot)

sampled exactly by Gumbel-top-k (sort ``s + Gumbel``), greedy = sort by ``s``.

Why an explicit temperature on raw scores: the paper's softmax-normalised scores lie in (0, 1) and
sum to 1, so with K = 20 two items differ by a few hundredths and a sampled permutation is close to
uniform (``exploration_report`` measures the KT between samples and the greedy order for both
choices). Raw scores with a temperature keep exploration a knob.
"""

from __future__ import annotations

import torch

from rsd_rerank.agent.networks import Agent
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.proposers import Round

__all__ = ["AgentProposer", "exploration_report", "free_slots_from", "gumbel_perturbed", "pl_log_prob"]


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
    # Drawn on the generator's device (the CPU for seeded training), so a seed gives the same samples
    # whatever device the agent runs on.
    u = torch.rand(logits.shape, generator=generator, device=generator.device, dtype=logits.dtype).to(logits.device)
    return logits - torch.log(-torch.log(u.clamp(min=1e-20)))


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


def _kt_of_sample(logits: torch.Tensor, generator: torch.Generator, n: int = 200) -> float:
    """Mean Kendall tau between Plackett–Luce samples of ``logits`` [K] and their greedy order."""
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
