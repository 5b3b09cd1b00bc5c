"""How an episode can end: the outcome names every record, metric and export uses."""

COMPLETED = "completed"
TIMEOUT = "timeout"
AGENT_ERROR = "agent_error"
ENV_ERROR = "env_error"
OUTCOMES = (COMPLETED, TIMEOUT, AGENT_ERROR, ENV_ERROR)
LOST_BY_AGENT = (TIMEOUT, AGENT_ERROR)
"""Outcomes the agent is to blame for: scored as failed episodes."""

STOPPED = "stopped"
"""Not an outcome a submission ever records: the episode was cut because its submission ended."""
