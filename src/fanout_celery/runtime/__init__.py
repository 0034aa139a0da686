"""The runtime: one attempt of a run, from the handler's first line to its checkpoint.

It talks to the store through the attempt's journal, and to the rest of the world
through the ``Effects`` port (``ports.py``); it knows nothing of Celery.
"""

from .attempt import LeaseKeeper, Outcome, run_attempt
from .services import Services

__all__ = ["LeaseKeeper", "Outcome", "Services", "run_attempt"]
