"""Example agents: `python -m agent_bridge.examples.<name>` serves one on $FLATEVAL_AGENT_BIND."""
