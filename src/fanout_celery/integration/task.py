"""The Celery task each function becomes, and its worker-side request class.

What Celery sees of a run's attempt:

- a run that **fails** ends its task with the error that failed it: the handler's own
  exception, or a step's (after its last retry), with its traceback, so ``task_failure``
  receivers, error trackers and Flower show the user's error;
- a step that **retries** fires ``task_retry`` and ends its task as ``task-retried``
  (Flower: RETRY), with the step's error;
- a run that **parks** (sleeps, waits, queues for a concurrency slot) ends its task as
  ``task-sleeping`` / ``task-waiting`` / ``task-throttled``, logged as "parked", not
  "succeeded";
- when the run ends, its **earlier attempts** (each a task of its own) get a final
  ``task-succeeded`` event, so none reads as waiting for ever;
- a task given a run id that names no run **fails** (``RunNotFoundError``);
- an attempt stopped by Redis being away (or a write its replicas did not confirm) is
  **retried** by Celery after one lease period, however many times it takes.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.signals import task_retry
from celery.worker.request import Request

from ..errors import RunFailedError, RunNotFoundError, StepError
from ..model.definition import FunctionDef
from ..runtime import Outcome, run_attempt
from . import signals
from .host import Host

logger = logging.getLogger("fanout.function")

# The Celery task event sent when a run parks, by the status it parks in; a step retry
# is Celery's own task-retried (Flower's RETRY state and "Retried" filter).
PARKED_EVENTS = {"queued": "task-retrying", "retrying": "task-retried",
                 "sleeping": "task-sleeping", "waiting": "task-waiting",
                 "throttled": "task-throttled"}
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
JSON = "application/json"


def parked_event(result: Any) -> tuple[str, str] | None:
    """``(task event, detail)`` for a task result that says the run parked: the result is
    ``"<status>"`` or ``"<status>: <detail>"`` (repr'd or not, as the pool reports it)."""
    text = str(result)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    status, _, detail = text.partition(": ")
    event = PARKED_EVENTS.get(status)
    return None if event is None else (event, detail)


class ParkedLogFilter(logging.Filter):
    """Logs a parked attempt as parked: Celery's "Task x succeeded in 0.01s: 'sleeping'"
    becomes "Task x parked in 0.01s: 'sleeping: until 2026-12-01T12:00:00+00:00'"."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and str(args.get("name", "")).startswith("fanout.") \
                and "succeeded in" in str(record.msg) \
                and parked_event(args.get("return_value", "")) is not None:
            record.msg = str(record.msg).replace("succeeded in", "parked in")
        return True


class FunctionRequest(Request):  # type: ignore[misc]
    """Worker-side request of a function task.

    It refuses messages that are not JSON: a run's message carries only its run id, always
    as JSON; any other content type (pickle, yaml) was not sent by this library and is
    dropped unexecuted, as if revoked.

    And it tells monitors what a parked run is doing: the task of a run that parked
    returns its status, and the worker's ``task-succeeded`` event for it is sent as the
    parked state's event instead (see the module docstring). Rewriting the event here
    costs nothing; ending the task with an exception would cost a formatted traceback per
    park.
    """

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        if type == "task-succeeded" and self.task.fanout.settings.task_events:
            parked = parked_event(fields.get("result", ""))
            if parked is not None:
                type, detail = parked
                fields.pop("result", None)
                if type == "task-retried":
                    fields.update(exception=detail, traceback="")
                elif detail:
                    fields["detail"] = detail
        super().send_event(type, **fields)

    def revoked(self) -> bool:
        if self.content_type != JSON:
            if not self._already_revoked:
                logger.error("refusing a %s message for task %s: fanout functions accept "
                             "JSON only", self.content_type, self.task_name)
                self._announce_revoked("refused: not JSON", False, None, False)
            return True
        return bool(super().revoked())


def _when(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class Function(Task):  # type: ignore[misc]
    """A fanout function: a registered Celery task whose runs are durable.

    Calling the task directly is not how runs start: use ``fanout.send`` (events) or
    ``fanout.invoke``. The task's only argument is a run id.
    """

    Request = "fanout_celery.integration.task:FunctionRequest"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    serializer = "json"
    typing = False
    fanout: Host
    definition: FunctionDef

    @property
    def function_id(self) -> str:
        return self.definition.function_id

    def report(self, run_id: str, outcome: Outcome) -> str:
        """End the Celery task so monitors show what the attempt did (module docstring)."""
        fid = self.function_id
        status = outcome.status
        if status == "missing":
            raise RunNotFoundError(f"no run {run_id} of {fid!r}: it expired, or was never "
                                   "created (start runs with fanout.send or fanout.invoke)")
        if status in ("completed", "failed", "cancelled"):
            self._close_earlier_attempts(outcome.attempts, status)
        if status == "failed":
            error = outcome.error
            signals.run_failed.send(sender=fid, run_id=run_id, exception=error)
            self.fanout.run_failed(run_id)
            if isinstance(error, StepError) and isinstance(error.__cause__, Exception):
                raise error.__cause__  # the step's own exception, raised in this attempt
            if isinstance(error, Exception):
                raise error
            raise RunFailedError(f"run {run_id} of {fid!r} failed")
        if status in ("completed", "cancelled"):
            signals.run_finished.send(sender=fid, run_id=run_id, status=status, output=None)
            return status
        if outcome.retried is not None:
            step_id, exc = outcome.retried
            task_retry.send(sender=self, request=self.request, reason=exc, einfo=None)
            signals.step_retried.send(sender=fid, run_id=run_id, step_id=step_id,
                                      exception=exc, attempt=None)
            return f"retrying: {type(exc).__name__}: {exc}"[:500]
        if status in PARKED_EVENTS:
            wake = _when(outcome.wake_at)
            signals.run_parked.send(sender=fid, run_id=run_id, status=status, wake_at=wake)
            return f"{status}: until {wake.isoformat()}" if wake else status
        return status

    def _close_earlier_attempts(self, attempts: list[str], status: str) -> None:
        """A final event for each earlier attempt's task: it parked, and the run it
        parked has now ended (its state is on this task)."""
        if not attempts or not self.fanout.settings.task_events \
                or not self.app.conf.worker_send_task_events:
            return
        try:
            with self.app.events.default_dispatcher(hostname=self.request.hostname) as d:
                for task_id in attempts:
                    d.send("task-succeeded", uuid=task_id, runtime=0,
                           result=repr(f"resumed: the run {status} in task {self.request.id}"))
        except Exception:  # monitoring only: never fail the run's task for it
            logger.warning("could not send the final events of earlier attempts",
                           exc_info=True)


def register(app: Any, host: Host, definition: FunctionDef,
             task_options: dict[str, Any]) -> Function:
    """Register ``definition`` as a Celery task of ``app``."""

    def run(task: Function, run_id: str, *args: Any, **meta: Any) -> str:
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise RunNotFoundError(
                f"{run_id!r} is not a run id: a function's task takes the id of a run "
                "created by fanout.send or fanout.invoke, not data")
        services = host.services
        try:
            outcome = run_attempt(services, definition, run_id, task.request.id or "")
        except Exception as exc:
            if not services.store.transient(exc):
                raise
            # Redis was away, or a write was not confirmed by its replicas (wait_replicas)
            # and may be lost in a failover: then not even the run's start may have
            # survived, and nothing would take the run up again but the dispatch cover.
            # The message comes back once a lease taken by this attempt has expired.
            raise task.retry(exc=exc, countdown=services.settings.lease_seconds,
                             max_retries=None) from exc
        return task.report(run_id, outcome)

    # Celery builds the task's signature check by exec'ing a `def <__name__>(...)`:
    # the name must be an identifier, which a function id like "send-email" is not.
    handler_name = getattr(definition.handler, "__name__", "")
    run.__name__ = handler_name if handler_name.isidentifier() else "run"
    run.__doc__ = definition.handler.__doc__
    run.__module__ = definition.handler.__module__
    # The queue is not set on the task (a deprecated attribute): every message of a
    # run is published with the function's queue explicitly.
    task: Function = app.task(
        # shared=False: a shared task would also be registered on every Celery app
        # created later in this process, bound to this Fanout.
        run, name=definition.task_name, base=Function, bind=True, lazy=False, shared=False,
        fanout=host, definition=definition, **task_options,
    )
    return task
