"""The agents ERS ships: a router and the nutrition, workout and budget agents."""

from service.agents.base import ALIASES, Agent, AgentReply, AgentRequest, canonical_agent_name

__all__ = ["ALIASES", "Agent", "AgentReply", "AgentRequest", "canonical_agent_name"]
