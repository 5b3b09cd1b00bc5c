"""Scoring: per-episode normalized return and completion, the episode record, aggregation."""
