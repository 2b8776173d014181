"""The RSD agent: relevance networks (``networks``), the Plackett–Luce policy and ``rsd`` proposer
(``policy``), and checkpoints with the bundled agents (``checkpoints``)."""

from rsd_rerank.agent.networks import FEATURES, K_TIED, NETWORKS, Agent, AgentConfig, item_features
from rsd_rerank.agent.policy import AgentProposer, exploration_report, free_slots_from, gumbel_perturbed, pl_log_prob
from rsd_rerank.agent.store import BUNDLED, agent_digest, default_agent, load_agent, resolve_agent, save_agent

__all__ = [
    "FEATURES",
    "BUNDLED",
    "K_TIED",
    "NETWORKS",
    "Agent",
    "AgentConfig",
    "AgentProposer",
    "agent_digest",
    "default_agent",
    "exploration_report",
    "free_slots_from",
    "gumbel_perturbed",
    "item_features",
    "load_agent",
    "pl_log_prob",
    "resolve_agent",
    "save_agent",
]
