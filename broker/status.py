"""A submission's status, as its record holds it.

It moves ``submitted -> queued -> running -> finished | failed | cancelled``; `broker.store` makes
every move atomically, and the terminal states are final. Nothing here talks to Redis: a process
that only reads a status (the progress bar) imports this alone.
"""

SUBMITTED, QUEUED, RUNNING = "submitted", "queued", "running"
FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
TERMINAL = (FINISHED, FAILED, CANCELLED)
