"""The Celery task each function becomes, and its worker-side request class."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.worker.request import Request

from ..errors import RunFailedError
from ..model.definition import FunctionDef
from ..runtime import run_attempt
from .host import Host

logger = logging.getLogger("fanout.function")

# The Celery task event sent when a run parks, by the status it parks in.
PARKED_EVENTS = {"queued": "task-retrying", "sleeping": "task-sleeping",
                 "waiting": "task-waiting", "throttled": "task-throttled"}
# The same, keyed by the task's result as the worker reports it (its repr).
PARKED_RESULTS = {**{repr(k): v for k, v in PARKED_EVENTS.items()}, **PARKED_EVENTS}

JSON = "application/json"


class FunctionRequest(Request):  # type: ignore[misc]
    """Worker-side request of a function task.

    It refuses messages that are not JSON: a run's message carries only its run id, always
    as JSON; any other content type (pickle, yaml) was not sent by this library and is
    dropped unexecuted, as if revoked.

    And it tells monitors what a parked run is doing: the task of a run that parked
    returns its status, and the worker's ``task-succeeded`` event for it is sent as
    ``task-sleeping`` / ``task-waiting`` / ``task-retrying`` / ``task-throttled`` instead
    (Flower shows that state). Rewriting the event here costs nothing; ending the task
    with an exception would cost a formatted traceback per park.
    """

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        if type == "task-succeeded":
            parked = PARKED_RESULTS.get(str(fields.get("result", "")))
            if parked is not None and self.task.fanout.settings.task_events:
                type = parked
                fields.pop("result", None)
        super().send_event(type, **fields)

    def revoked(self) -> bool:
        if self.content_type != JSON:
            if not self._already_revoked:
                logger.error("refusing a %s message for task %s: fanout functions accept "
                             "JSON only", self.content_type, self.task_name)
                self._announce_revoked("refused: not JSON", False, None, False)
            return True
        return bool(super().revoked())


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

    def report(self, run_id: str, status: str) -> str:
        """End the Celery task so monitors show the run's state, not a plain SUCCESS.

        A parked run's task returns its status, which ``FunctionRequest`` turns into a
        custom task event; a failed run ends the task as FAILURE.
        """
        if status == "failed":
            raise RunFailedError(f"run {run_id} of {self.function_id!r} failed")
        return status


def register(app: Any, host: Host, definition: FunctionDef,
             task_options: dict[str, Any]) -> Function:
    """Register ``definition`` as a Celery task of ``app``."""

    def run(task: Function, run_id: str, *args: Any, **meta: Any) -> str:
        return task.report(run_id, run_attempt(host.services, definition, run_id))

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
