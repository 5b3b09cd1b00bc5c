"""Env workers: the RQ job that runs one episode against one paired agent."""
