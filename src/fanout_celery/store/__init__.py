"""Where run state lives: the store port (``port.py``) and its two implementations,
Redis (``redis/``) and in memory (``memory.py``)."""

from .port import (
    Created,
    Dispatch,
    FlowKey,
    Gate,
    NotStarted,
    Resolution,
    SlotSet,
    Started,
    Store,
    Waiters,
)

__all__ = [
    "Created",
    "Dispatch",
    "FlowKey",
    "Gate",
    "NotStarted",
    "Resolution",
    "SlotSet",
    "Started",
    "Store",
    "Waiters",
]
