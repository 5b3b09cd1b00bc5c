"""The shared vocabulary every layer speaks: settings, challenge rules, outcome names, the episode spec.

This package is the floor of the house: it imports nothing of flateval's other packages, so any of
them can import it (see docs/architecture.md, "Layers").
"""
