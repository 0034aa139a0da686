"""The in-memory implementation of the store port."""

from .store import MemoryStore

__all__ = ["MemoryStore"]
