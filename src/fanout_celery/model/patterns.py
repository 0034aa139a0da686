"""Names and paths given by users: event triggers (``app/*``) and dotted paths
(``data.user_id``). Paths are resolved by code, never evaluated."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError, InvalidStepError

SYSTEM_PREFIX = "fanout/"
PATTERN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-./:@+]{0,254}\Z")
PATH_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\Z")


def check_pattern(pattern: Any) -> str:
    """Validate an ``event=`` trigger: an exact name, or ``prefix/*`` / ``prefix.*``."""
    if not isinstance(pattern, str):
        raise ConfigurationError(f"an event trigger is a string, not {type(pattern).__name__}")
    if "*" in pattern:
        head = pattern[:-1]
        if not pattern.endswith("*") or "*" in head or not head.endswith(("/", ".")) \
                or not PATTERN_RE.match(head):
            raise ConfigurationError(
                f"invalid wildcard {pattern!r}: a wildcard is a trailing '*' after '/' or '.', "
                "as in 'app/*' or 'app/user.*'"
            )
        if head.startswith(SYSTEM_PREFIX):
            raise ConfigurationError(
                f"wildcards over {SYSTEM_PREFIX!r} system events are not allowed "
                "(a function could trigger itself); subscribe to the exact name"
            )
        return pattern
    if not PATTERN_RE.match(pattern):
        raise ConfigurationError(
            f"invalid event name {pattern!r}: 1-255 letters, digits and _-./:@+"
        )
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Whether the event ``name`` matches a trigger ``pattern`` (checked by check_pattern)."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1]) and not name.startswith(SYSTEM_PREFIX)
    return pattern == name


def check_path(path: Any, what: str = "match") -> str:
    """A dotted path such as ``data.user_id``; resolved by code, never evaluated."""
    if not isinstance(path, str) or not PATH_RE.match(path) or len(path) > 256:
        raise InvalidStepError(
            f"{what} must be a dotted path such as 'data.user_id' (letters, digits, _ and -), "
            f"got {path!r}"
        )
    return path


def resolve_path(obj: Any, path: str) -> Any:
    """Resolve a dotted path (``data.user.id``) in nested dicts/lists; ``None`` when absent."""
    current = obj
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current
