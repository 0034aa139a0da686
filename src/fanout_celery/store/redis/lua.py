"""The Lua scripts of ``scripts/``, called by SHA.

Each script is ``prelude.lua`` (shared definitions, such as the set of final statuses),
then any snippet it names with ``--! include <name>``, then its own text, which starts
with a header of its KEYS and ARGV. A call is one ``EVALSHA``: a server that does not
know the script yet (``NOSCRIPT``: it restarted, or its cache was flushed) gets it with
``SCRIPT LOAD`` and the call is made again.

redis-py's ``Script`` objects are not used: in a pipeline they cost a ``SCRIPT EXISTS``
round trip before every execution. Pipelines here are executed with
``raise_on_error=False``; a command refused with ``NOSCRIPT`` did not run, so after
loading the scripts, exactly those commands run again, in their order. Pipelines mixing
scripts with plain commands that must follow them are not built.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from .connect import RETRIES, backoff, is_transient

SCRIPTS = Path(__file__).with_name("scripts")
INCLUDE_RE = re.compile(r"^--! include (\w+)\s*$", re.M)


@cache
def _read(name: str) -> str:
    return (SCRIPTS / f"{name}.lua").read_text()


class Lua:
    """One script: its full source and SHA1."""

    def __init__(self, name: str) -> None:
        body = _read(name)
        parts = [_read("prelude")] + [_read(inc) for inc in INCLUDE_RE.findall(body)]
        self.name = name
        self.source = "\n".join([*parts, INCLUDE_RE.sub("", body)])
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Lua {self.name}>"

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script now (``client``: a Redis client, not a pipeline).

        A script whose write the server refuses (``READONLY`` from a primary a failover
        demoted, ``OOM``; Redis 6.2 words it "Error running script ... -READONLY ...", a
        plain ``ResponseError`` the client's own retry does not cover) is refused at its
        first write: a replica takes none, and over ``maxmemory`` only a script that has
        not written yet is refused. It changed nothing, so it runs again here, with the
        client's back-off, on a new connection (which reaches a new primary)."""
        if type(client) is redis.Redis:
            # The hot path (a step's checkpoint, a run's start and end): one command on
            # a pooled connection, without redis-py's per-command wrappers (retry,
            # observability), about 20 µs of CPU less. Anything unusual (an error reply,
            # a broken connection) takes the full path below, which retries.
            fast = _fast_call(client, self.sha, keys, args)
            if fast is not _FALLBACK:
                return fast
        for attempt in range(RETRIES + 1):
            try:
                try:
                    return client.evalsha(self.sha, len(keys), *keys, *args)
                except NoScriptError:
                    client.script_load(self.source)
                    return client.evalsha(self.sha, len(keys), *keys, *args)
            except ResponseError as exc:
                if attempt == RETRIES or not is_transient(exc):
                    raise
            time.sleep(backoff(attempt + 1))
            reconnect(client)
        raise AssertionError("unreachable")  # pragma: no cover

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to ``pipe`` (run it with ``execute``). By ``execute_command``: a
        cluster pipeline refuses its ``evalsha`` method, not the command, which it sends
        to the master of the first key's slot."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


_FALLBACK = object()


def _fast_call(client: redis.Redis[Any], sha: str, keys: Sequence[Any],
               args: Sequence[Any]) -> Any:
    """``EVALSHA`` on a connection of ``client``'s pool, sent and read directly; returns
    ``_FALLBACK`` when the reply is an error or the connection failed (the command may
    then have run: a script fenced by its lease token, or idempotent, is safe to send
    again, as redis-py's own retry would)."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except Exception:
        return _FALLBACK
    try:
        conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
        reply = conn.read_response()
    except ResponseError:
        pool.release(conn)
        return _FALLBACK
    except Exception:
        conn.disconnect()
        pool.release(conn)
        return _FALLBACK
    pool.release(conn)
    return reply


class Scripts:
    """Every script, loaded by name: ``scripts.start(client, keys, args)``."""

    def __init__(self) -> None:
        self._all = {p.stem: Lua(p.stem) for p in SCRIPTS.glob("*.lua")
                     if p.stem not in ("prelude", "wake", "waiter")}

    def __getattr__(self, name: str) -> Lua:
        try:
            return self._all[name]
        except KeyError:
            raise AttributeError(name) from None

    def load_all(self, client: Any) -> None:
        for script in self._all.values():
            client.script_load(script.source)

    def by_sha(self, sha: str) -> Lua | None:
        return next((s for s in self._all.values() if s.sha == sha), None)


def reconnect(client: Any) -> None:
    """After a refused command: reconnect, since the server may be a new primary now (on
    a cluster, ask it again which master holds each slot: a replica may have taken over
    from a master that died)."""
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        try:
            nodes.initialize()
        except Exception:  # no node answers yet: the next try asks again
            pass
        return
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()


def _queued(pipe: Any) -> list[Any]:
    """The commands queued in ``pipe`` (a cluster pipeline keeps them elsewhere)."""
    strategy = getattr(pipe, "_execution_strategy", None)
    if strategy is not None:
        return list(strategy.command_queue)
    return list(getattr(pipe, "command_stack", []))


def execute(pipe: Any, scripts: Scripts, client: Any) -> list[Any]:
    """Execute ``pipe``. Commands refused with ``NOSCRIPT`` are run again after the
    scripts are loaded; commands refused with a transient error (``READONLY`` during a
    failover, ``OOM``, ``LOADING``: see ``connect.TRANSIENT``) are run again with the
    client's back-off, on a new connection. Either way the refused command did not run,
    and only such commands run again, in their order. Other errors are raised."""
    commands = _queued(pipe)
    try:
        results = pipe.execute(raise_on_error=False)
    except Exception as exc:
        # A cluster pipeline raises (it returns no results) when a master is
        # unreachable; some of its commands may have run on other masters, so none is
        # sent again here: the caller's retry does. Ask the cluster now who holds each
        # slot, so that retry reaches the replica that takes over.
        if is_transient(exc):
            reconnect(client)
        raise
    for attempt in range(RETRIES + 1):
        refused = [i for i, r in enumerate(results)
                   if isinstance(r, NoScriptError) or (attempt < RETRIES and is_transient(r))]
        if not refused:
            break
        if any(isinstance(results[i], NoScriptError) for i in refused):
            scripts.load_all(client)
        else:
            time.sleep(backoff(attempt + 1))
            reconnect(client)
        again = client.pipeline(transaction=False)
        for i in refused:
            args = commands[i].args if hasattr(commands[i], "args") else commands[i][0]
            again.execute_command(*args)
        for i, value in zip(refused, again.execute(raise_on_error=False), strict=True):
            results[i] = value
    for value in results:
        if isinstance(value, Exception):
            raise value
    return list(results)
