"""The stubs of ``run_function``: what its steps get instead of a call, a wait or a child.

Stubs are keyed by step id (covering every repeat: ``item``, ``item:1``…) or by one step
key (``item:1``), which wins over the id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import FanoutError, InvalidEventError, StepError
from ..model.events import Event, dumps, prepare
from ..model.patterns import resolve_path
from ..model.records import error_info, event_matches

_COUNTER = re.compile(r"(.+):\d+")


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT: Any = _TimedOut()
"""The stub of a ``wait_for_event`` or ``invoke`` step that times out."""


class StubError(FanoutError):
    """A stub given to ``run_function`` is malformed, missing (a ``wait_for_event`` or
    ``invoke`` step was reached without one) or impossible (an event that would not
    resolve the wait). A mistake in the test, raised by ``run_function`` itself."""


class StubAbort(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Carries a ``StubError`` out of the handler: no ``except`` there may catch it."""

    def __init__(self, error: StubError) -> None:
        super().__init__(str(error))
        self.error = error


def _exception(value: Any, what: str) -> Exception:
    if isinstance(value, type) and issubclass(value, Exception):
        return value()
    if isinstance(value, Exception):
        return value
    raise StubError(f"{what}: expected an exception (or its class), got {value!r}")


def _base(key: str) -> str:
    match = _COUNTER.fullmatch(key)
    return match.group(1) if match else key


class Stubs:
    """The stubs of one ``run_function`` call, and which of them were used."""

    def __init__(self, steps: Mapping[str, Any] | None, fail_steps: Mapping[str, Any] | None,
                 waits: Mapping[str, Any] | None, invokes: Mapping[str, Any] | None) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        for name, table in (("steps", steps), ("waits", waits), ("invokes", invokes),
                            ("fail_steps", fail_steps)):
            if table is not None and not isinstance(table, Mapping):
                raise StubError(f"{name} must be a dict keyed by step id, not "
                                f"{type(table).__name__}")
            self.tables[name] = dict(table or {})
        self.failures: dict[str, tuple[bool, list[Exception]]] = {}
        for step_id, value in self.tables["fail_steps"].items():
            what = f"fail_steps[{step_id!r}]"
            if isinstance(value, (list, tuple)):
                self.failures[step_id] = (False, [_exception(v, what) for v in value])
            else:
                self.failures[step_id] = (True, [_exception(value, what)])
        for step_id, value in self.tables["invokes"].items():
            if isinstance(value, type) and issubclass(value, Exception):
                self.tables["invokes"][step_id] = value()
        self.used: set[tuple[str, str]] = set()

    def find(self, table: str, key: str, step_id: str | None = None) -> tuple[bool, Any]:
        """``(True, stub)`` for the step key or its step id, else ``(False, None)``."""
        stubs = self.tables[table]
        for name in (key, _base(key) if step_id is None else step_id):
            if name in stubs:
                self.used.add((table, name))
                return True, stubs[name]
        return False, None

    def failure(self, key: str, step_id: str, attempt: int) -> Exception | None:
        """The exception attempt ``attempt`` (0-based) of the step raises, if any."""
        found, _ = self.find("fail_steps", key, step_id)
        if not found:
            return None
        always, errors = self.failures[key if key in self.failures else step_id]
        if always:
            return errors[0]
        return errors[attempt] if attempt < len(errors) else None

    def unused(self) -> list[str]:
        return [f"{table}[{name!r}]" for table, stubs in self.tables.items()
                for name in stubs if (table, name) not in self.used]

    def resolve(self, key: str, current: dict[str, Any], waiter_json: str | None,
                max_event_bytes: int, now: int) -> dict[str, Any] | None:
        """The record a waiting ``wait_for_event`` or ``invoke`` step resolves to, as an
        arriving event or a finished child would leave it; None when it times out."""
        kind = current.get("kind")
        if kind == "wait_for_event":
            found, value = self.find("waits", key)
            if not found:
                raise StubAbort(StubError(
                    f"wait_for_event step {key!r} has no stub: pass waits={{{key!r}: "
                    "<the event that arrives, or None for a timeout>}"))
            if value is None or value is TIMED_OUT:
                return None
            event = _arriving(key, current, value, json.loads(waiter_json or "{}"),
                              max_event_bytes)
            return {**current, "status": "completed", "output": event, "attempts": 1,
                    "ended_at": now}
        if kind == "invoke":
            found, value = self.find("invokes", key)
            if not found:
                raise StubAbort(StubError(
                    f"invoke step {key!r} has no stub: pass invokes={{{key!r}: <the child "
                    "run's output, an exception for a failure, or TIMED_OUT>}"))
            if value is TIMED_OUT:
                return None
            if isinstance(value, BaseException):
                error = {**value.error, "step": value.step_id} \
                    if isinstance(value, StepError) else error_info(value)
                return {**current, "status": "failed", "error": error, "attempts": 1,
                        "ended_at": now}
            try:
                output = json.loads(dumps(value))
            except (TypeError, ValueError) as exc:
                raise StubAbort(StubError(f"the stub of invoke step {key!r} is not JSON: "
                                          f"{exc}"))
            return {**current, "status": "completed", "output": output, "attempts": 1,
                    "ended_at": now}
        raise RuntimeError(f"step {key!r} ({kind}) cannot be resolved in-process")


def _arriving(key: str, current: dict[str, Any], value: Any, waiter: dict[str, Any],
              max_event_bytes: int) -> dict[str, Any]:
    """The stub's event as stored, checked to be one that would resolve the wait."""
    raw = value.model_dump(exclude_none=True) if isinstance(value, Event) else value
    if isinstance(raw, dict) and "name" not in raw:
        raw = {**raw, "name": current["event"]}
    try:
        record = prepare(raw, max_bytes=max_event_bytes, allow_system=True)
    except InvalidEventError as exc:
        raise StubAbort(StubError(f"the stub of wait_for_event step {key!r}: {exc}"))
    if record["name"] != current["event"]:
        raise StubAbort(StubError(
            f"the stub of wait_for_event step {key!r} is a {record['name']!r} event; the "
            f"step waits for {current['event']!r}"))
    if not event_matches(waiter, record):  # only a wait with a match path can refuse it
        path = str(waiter.get("path"))
        raise StubAbort(StubError(
            f"the stub event of wait_for_event step {key!r} would not resolve it: its "
            f"{path} is {resolve_path(record, path)!r}, the run waits for "
            f"{waiter.get('value')!r}"))
    return record
