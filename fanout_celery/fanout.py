"""``Fanout``: the extension bound to one Celery app."""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from celery import Celery

from . import admission, control, parallel, scheduler
from .cron import check_missed, parse_cron
from .durations import instant_ms
from .errors import (
    ConfigurationError,
    DuplicateFunctionError,
    InvalidEventError,
    RunTimeoutError,
    UnknownFunctionError,
)
from .events import (
    FUNCTION_FAILED,
    FUNCTION_INVOKED,
    derived_id,
    new_id,
    now_ms,
    prepare,
    prepare_batch,
)
from .execution import LeaseKeeper, run_attempt
from .flow import CancelOn, Timeouts, coerce_cancel_on
from .flowcontrol import (
    Batch,
    Debounce,
    FlowControl,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from .function import (
    Function,
    FunctionDef,
    as_list,
    check_events,
    check_function_id,
    check_handler,
    check_task_options,
)
from .middleware import Chain, Middleware
from .publish import FastPublisher
from .retry import RetryPolicy
from .routing import Router, Subscription
from .runs import FINAL, Run
from .settings import Settings
from .store.flow import FlowStore
from .store.redis import NewRun, RedisStore
from .typed import EventType

logger = logging.getLogger("fanout")

_INSTANCES: weakref.WeakKeyDictionary[Celery, Fanout] = weakref.WeakKeyDictionary()
# Runs are created and published in chunks of this many: one pipeline per chunk.
CHUNK = 500


def _batch(producer: Any) -> AbstractContextManager[Any]:
    """Pipeline the messages published in the block when kombu can (its Redis
    transport, kombu >= 5.7): one round trip per chunk instead of one per message."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=CHUNK * 2) if batch is not None else nullcontext()


def fanout_for(app: Celery) -> Fanout | None:
    """The ``Fanout`` bound to ``app``, if any."""
    return _INSTANCES.get(app)


class Fanout:
    """Durable, event-driven functions for one Celery app.

    Settings come from ``app.conf.fanout_*``; ``redis_url`` and ``key_prefix`` override
    them. Functions are registered as Celery tasks on ``app``, and a timer pump runs in
    every worker of the app.
    """

    def __init__(self, app: Celery, *, redis_url: str | None = None,
                 key_prefix: str | None = None,
                 middleware: Sequence[Middleware] = ()) -> None:
        if app in _INSTANCES:
            raise ConfigurationError("this Celery app already has a Fanout; create one per app")
        self.app = app
        self._overrides = {"redis_url": redis_url, "key_prefix": key_prefix}
        self._settings: Settings | None = None
        self._store: RedisStore | None = None
        self._fast: FastPublisher | None = None
        self._flow_store: FlowStore | None = None
        self.middleware = Chain(middleware)
        self.event_types: dict[str, EventType[Any]] = {}
        self._lock = threading.Lock()
        self.functions: dict[str, FunctionDef] = {}
        self.tasks: dict[str, Function] = {}
        self.router = Router(lambda: self.store.load_subscriptions())
        self.leases = LeaseKeeper(self)
        self._published = False
        from .reconnect import GuardReconnectStep
        from .timers import PumpStep

        app.steps["worker"].add(PumpStep)
        app.steps["consumer"].add(GuardReconnectStep)
        _INSTANCES[app] = self

    def __repr__(self) -> str:
        return f"<Fanout app={self.app.main!r} functions={len(self.functions)}>"

    def check_redis(self) -> list[str]:
        """Problems with the Redis that holds run state, as messages (also logged):
        an eviction policy that may drop live run keys, an app accepting pickle."""
        problems = []
        policy = self.store.maxmemory_policy()
        if policy and policy.startswith("allkeys"):
            problems.append(
                f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
                "the keys of live runs and lose them; use 'noeviction' (or 'volatile-*', "
                "which only evicts finished runs and old events)")
        accept = {str(c).lower() for c in (self.app.conf.accept_content or [])}
        if accept & {"pickle", "application/x-python-serialize", "yaml",
                     "application/x-yaml"}:
            problems.append(
                "accept_content allows pickle or yaml: workers decode such messages before "
                "any task sees them; fanout functions refuse non-JSON messages, but keep "
                "accept_content=['json'] so nothing untrusted is unpickled")
        for problem in problems:
            logger.warning("fanout: %s", problem)
        return problems

    # -- configuration (resolved on first use, so app.conf may be set after) --------
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_app(self.app, **self._overrides)
        return self._settings

    @property
    def fast_publisher(self) -> FastPublisher:
        if self._fast is None:
            self._fast = FastPublisher(self.app)
        return self._fast

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    s = self.settings
                    self._store = RedisStore(s.redis_url, s.key_prefix)
        return self._store

    # -- declaring functions -------------------------------------------------------
    def function(self, id: str, *, event: Any = None,
                 cron: str | Sequence[str] | None = None,
                 retries: int | RetryPolicy = 4,
                 on_failure: Callable[..., Any] | None = None,
                 name: str | None = None, queue: str | None = None,
                 cron_missed: str = "latest", cron_missed_limit: int = 10,
                 cancel_on: CancelOn | Sequence[CancelOn] | None = None,
                 timeouts: Timeouts | None = None,
                 concurrency: Any = None, throttle: Throttle | None = None,
                 rate_limit: RateLimit | None = None, debounce: Debounce | None = None,
                 batch_events: Batch | None = None, priority: Priority | None = None,
                 singleton: Singleton | None = None, idempotency: str | None = None,
                 **task_options: Any) -> Callable[[Callable[..., Any]], Function]:
        """Declare a durable function triggered by ``event`` and/or ``cron``.

        The decorated handler takes one argument, ``ctx``. Returns the registered
        Celery task (``fanout.<id>`` unless ``name`` is given). ``cron_missed`` says what
        happens to slots missed while beat was down: ``latest`` (default) fires the most
        recent one, ``all`` up to ``cron_missed_limit`` of them, ``none`` skips them.
        ``cancel_on`` cancels a run when a matching event arrives; ``timeouts`` cancels
        runs still queued after ``start`` or unfinished after ``finish``.
        """
        check_function_id(id)
        triggers = event if isinstance(event, (list, tuple)) else \
            ([] if event is None else [event])
        for trigger in triggers:
            if isinstance(trigger, EventType):
                self.register_event_type(trigger)
        events = check_events(as_list(
            [t.name if isinstance(t, EventType) else t for t in triggers] or None, "event"))
        crons = tuple(parse_cron(c).text for c in as_list(cron, "cron"))
        missed, missed_limit = check_missed(cron_missed, cron_missed_limit)
        cancel_list = coerce_cancel_on(cancel_on)
        flow = FlowControl.build(concurrency, throttle, rate_limit, debounce, batch_events,
                                 priority, singleton, idempotency)
        if timeouts is not None and not isinstance(timeouts, Timeouts):
            raise ConfigurationError(f"function {id!r}: timeouts must be a Timeouts(...)")
        policy = RetryPolicy.coerce(retries)
        check_task_options(task_options, id)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"function {id!r}: queue must be a non-empty string")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"function {id!r}: name must be a non-empty string")
        if id in self.functions:
            raise DuplicateFunctionError(f"a function with id {id!r} is already declared")
        if on_failure is not None:
            check_handler(on_failure, f"{id}-failure")
            if f"{id}-failure" in self.functions:
                raise DuplicateFunctionError(f"a function with id {id}-failure already exists")

        def decorator(handler: Callable[..., Any]) -> Function:
            check_handler(handler, id)
            definition = FunctionDef(
                function_id=id, handler=handler, events=events, crons=crons,
                retry_policy=policy, task_name=name or f"fanout.{id}", queue=queue or "",
                on_failure=f"{id}-failure" if on_failure else None,
                missed=missed, missed_limit=missed_limit, cancel_on=cancel_list,
                timeouts=timeouts, flow=flow,
            )
            task = self._register(definition, task_options)
            if crons:
                scheduler.install(self)
            if on_failure is not None:
                self._register(FunctionDef(
                    function_id=f"{id}-failure", handler=on_failure,
                    events=(FUNCTION_FAILED,), retry_policy=policy,
                    task_name=f"fanout.{id}-failure", queue=queue or "",
                    where=(("data.function_id", id),),
                ), {})
            return task

        return decorator

    def _register(self, definition: FunctionDef, task_options: dict[str, Any]) -> Function:
        if definition.function_id in self.functions:
            raise DuplicateFunctionError(
                f"a function with id {definition.function_id!r} is already declared")
        if definition.task_name in self.app.tasks:
            raise DuplicateFunctionError(
                f"a Celery task named {definition.task_name!r} already exists")
        fanout = self

        def run(task: Function, run_id: str, *args: Any, **meta: Any) -> str:
            return task.report(run_id, run_attempt(fanout, definition, run_id))

        # Celery builds the task's signature check by exec'ing a `def <__name__>(...)`:
        # the name must be an identifier, which a function id like "send-email" is not.
        handler_name = getattr(definition.handler, "__name__", "")
        run.__name__ = handler_name if handler_name.isidentifier() else "run"
        run.__doc__ = definition.handler.__doc__
        run.__module__ = definition.handler.__module__
        # The queue is not set on the task (a deprecated attribute): every message of a
        # run is published with the function's queue explicitly.
        options: dict[str, Any] = dict(task_options)
        task: Function = self.app.task(
            # shared=False: a shared task would also be registered on every Celery app
            # created later in this process, bound to this Fanout.
            run, name=definition.task_name, base=Function, bind=True, lazy=False, shared=False,
            fanout=self, definition=definition, **options,
        )
        self.functions[definition.function_id] = definition
        self.tasks[definition.function_id] = task
        self.router.add(definition.subscription())
        self._published = False
        return task

    def publish_subscriptions(self) -> None:
        """Publish this process's subscriptions, so processes without them can route."""
        self.store.publish_subscriptions(
            {fid: d.subscription().dumps() for fid, d in self.functions.items()})
        self._published = True

    # -- sending -------------------------------------------------------------------
    def send(self, events: Any) -> list[str]:
        """Publish one event or a list of them; every subscribed function gets one run
        per event. Returns the event ids. A batch with one bad event sends none.

        While Redis or the broker is unreachable this raises their connection error
        (``redis.ConnectionError``, ``kombu.exceptions.OperationalError``); sending the
        same events again is safe when they carry their own ids (an id starts one run)."""
        records = prepare_batch(events, max_bytes=self.settings.max_event_bytes)
        if self.event_types:
            self._check_types(records)
        if self.middleware:
            records = self._transform_sent(None, records)
        self._dispatch(records, parent=None)
        return [r["id"] for r in records]

    def register_event_type(self, event_type: EventType[Any]) -> EventType[Any]:
        """Validate every event of this name (sent from this process) against its model,
        and let handlers read ``ctx.data`` as the model."""
        if not isinstance(event_type, EventType):
            raise ConfigurationError(f"expected an EventType, got {event_type!r}")
        known = self.event_types.get(event_type.name)
        if known is not None and known.model is not event_type.model:
            raise ConfigurationError(f"event {event_type.name!r} already has the type "
                                     f"{known.model.__name__}")
        self.event_types[event_type.name] = event_type
        return event_type

    def _check_types(self, records: list[dict[str, Any]]) -> None:
        for index, record in enumerate(records):
            event_type = self.event_types.get(record["name"])
            if event_type is not None:
                try:
                    event_type.parse(record["data"])
                except InvalidEventError as exc:
                    raise InvalidEventError(f"event #{index} of the batch: {exc}; nothing "
                                            "was sent") from None

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware after those already added (see fanout_celery.middleware)."""
        self.middleware.add(middleware)

    def _transform_sent(self, ctx: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = self.middleware.before_send_events(ctx, records)
        # Middleware output is validated again: it must still be a valid event.
        return prepare_batch(out, max_bytes=self.settings.max_event_bytes * 2,
                             allow_system=True)

    def send_from_step(self, events: Any, id_for: Callable[[int], str],
                       parent: tuple[str, str], ctx: Any = None) -> list[str]:
        records = prepare_batch(events, max_bytes=self.settings.max_event_bytes, id_for=id_for)
        if self.event_types:
            self._check_types(records)
        if self.middleware:
            records = self._transform_sent(ctx, records)
        self._dispatch(records, parent=parent)
        return [r["id"] for r in records]

    def send_system(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        record = prepare(event, max_bytes=self.settings.max_event_bytes * 4, allow_system=True)
        if self.router.subscribers(record):
            self._dispatch([record], parent=parent)

    def _dispatch(self, records: list[dict[str, Any]], parent: tuple[str, str] | None,
                  only: Subscription | None = None, notify_parent: bool = False) -> int:
        """Create the runs the events start, publish the new ones; returns how many."""
        if self.functions and not self._published:
            self.publish_subscriptions()
        s = self.settings
        keep_events = int(max(s.retention, s.event_dedupe_window) * 1000)
        count = 0
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            now = now_ms()
            runs: list[NewRun] = []
            skipped: list[NewRun] = []
            subs_by_id: dict[str, Subscription] = {}
            for record in chunk:
                for sub in [only] if only else self.router.subscribers(record):
                    subs_by_id[sub.function_id] = sub
                    run = self._new_run(sub, [record], now, parent, notify_parent)
                    fate = admission.admit(self, sub, run, record, now) if sub.flow \
                        else "create"
                    if fate == "create":
                        runs.append(run)
                    elif fate == "skip":
                        skipped.append(run)
            if skipped:
                self.store.create_skipped(skipped, now, int(s.retention * 1000))
            created, waiters = self.store.create_runs(
                runs, chunk, now, now + int(s.lease_seconds * 1000), keep_events,
                int(s.wait_lookback * 1000))
            fresh = [run for run, made in zip(runs, created, strict=True) if made]
            self.publish_runs(fresh)
            self.store.confirm_dispatched([run.run_id for run in fresh],
                                          now_ms() + int(s.redispatch_seconds * 1000))
            control.after_create(self, chunk, waiters, fresh, subs_by_id)
            count += len(fresh)
        return count

    def _new_run(self, sub: Subscription, records: list[dict[str, Any]], now: int,
                 parent: tuple[str, str] | None, notify_parent: bool = False) -> NewRun:
        run_id = derived_id(sub.function_id, records[0]["id"])
        fields = {
            "function": sub.function_id, "task": sub.task, "queue": sub.queue,
            "status": "queued", "created_at": str(now), "attempt": "0",
            "events": json.dumps(records, separators=(",", ":")),
            "event_name": records[0]["name"],
        }
        if parent is not None:
            fields["parent_run_id"], fields["parent_step_id"] = parent
            if notify_parent:
                fields["notify_parent"] = "1"
        return NewRun(run_id=run_id, function_id=sub.function_id,
                      event_ids=[r["id"] for r in records], fields=fields)

    def enqueue(self, run_ids: Sequence[str]) -> None:
        """Publish the task messages of existing runs (woken from a wait queue)."""
        with self.app.producer_or_acquire() as producer, _batch(producer):
            for run_id, info in zip(run_ids, self.store.dispatch_info(run_ids), strict=True):
                if info is not None and info[2] not in FINAL:
                    self.publish_run(run_id, info[0], info[1], info[3], producer)

    def clock(self) -> int:
        """Now, in ms; tests replace it to cross a 24-hour idempotency window."""
        return now_ms()

    @property
    def flow_store(self) -> FlowStore:
        if self._flow_store is None:
            self._flow_store = FlowStore(self.store.client, self.store.keys)
        return self._flow_store

    def publish_runs(self, runs: Sequence[NewRun]) -> None:
        """Put the task messages of newly created runs on the broker."""
        if not runs:
            return
        if self.fast_publisher.publish([(r.run_id, r.fields["task"], r.fields["queue"],
                                         r.fields["event_name"]) for r in runs]):
            return
        with self.app.producer_or_acquire() as producer, _batch(producer):
            for run in runs:
                self.publish_run(run.run_id, run.fields["task"], run.fields["queue"],
                                 run.fields["event_name"], producer)

    def publish_run(self, run_id: str, task: str, queue: str, event_name: str = "",
                    producer: Any = None) -> None:
        """Put one run's task message on the broker. The run id is the only argument that
        matters; the event name rides along so monitors such as Flower show it."""
        options: dict[str, Any] = {"producer": producer} if producer is not None else {}
        if queue:
            options["queue"] = queue
        self.app.send_task(task, args=[run_id], kwargs={"event": event_name} if event_name
                           else None, serializer="json", **options)

    # -- runs ----------------------------------------------------------------------
    def invoke(self, function: Function | str, data: dict[str, Any] | None = None) -> str:
        """Start a run of ``function`` now (also for cron functions); returns its run id."""
        fid = function if isinstance(function, str) else getattr(function, "function_id", None)
        if not isinstance(fid, str):
            raise UnknownFunctionError(f"expected a fanout function or its id, got {function!r}")
        sub = self.functions[fid].subscription() if fid in self.functions \
            else self.router.all().get(fid)
        if sub is None:
            raise UnknownFunctionError(f"no function with id {fid!r} is declared or published")
        if data is not None and not isinstance(data, dict):
            raise InvalidEventError(f"invoke data must be a dict, not {type(data).__name__}")
        record = prepare({"name": FUNCTION_INVOKED, "data": data or {}, "id": new_id()},
                         max_bytes=self.settings.max_event_bytes, allow_system=True)
        if self.middleware:
            record = self._transform_sent(None, [record])[0]
        self._dispatch([record], parent=None, only=sub)
        return derived_id(fid, record["id"])

    def subscription_of(self, function_id: Any) -> Subscription | None:
        """The subscription of a function declared here or published by another process."""
        if not isinstance(function_id, str):
            return None
        local = self.functions.get(function_id)
        return local.subscription() if local else self.router.all().get(function_id)

    def start_child(self, sub: Subscription, event: dict[str, Any],
                    parent: tuple[str, str], ctx: Any = None) -> None:
        """Start (once) the run of ``step.invoke``; it resolves the parent when it ends."""
        record = prepare(event, max_bytes=self.settings.max_event_bytes, allow_system=True)
        if self.middleware:
            record = self._transform_sent(ctx, [record])[0]
        self._dispatch([record], parent=parent, only=sub, notify_parent=True)

    def start_branches(self, execution: Any, key: str, n: int) -> None:
        """Create (once) and enqueue the branch runs of a parallel group."""
        parallel.start_branches(self, execution, key, n)

    def resolve_waits(self, name: str, waiters: dict[str, str],
                      events: Sequence[dict[str, Any]]) -> int:
        return control.resolve_waits(self, name, waiters, events)

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        control.run_ended(self, run_id, run, outcome)

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel a run: at once when it is queued, sleeping or waiting; at its next step
        boundary when it is executing. Emits ``fanout/function.cancelled``. Returns
        ``cancelled``, ``requested``, ``final`` (already over) or ``missing``."""
        return control.cancel(self, run_id, reason)

    def cancel_runs(self, function: Function | str, started_after: datetime | None = None,
                    started_before: datetime | None = None) -> int:
        """Cancel the runs of ``function`` created in the time range; returns how many."""
        fid = function if isinstance(function, str) else getattr(function, "function_id", None)
        if self.subscription_of(fid) is None or not isinstance(fid, str):
            raise UnknownFunctionError(f"no function {function!r} is declared or published")
        return control.cancel_runs(
            self, fid, None if started_after is None else instant_ms(started_after),
            None if started_before is None else instant_ms(started_before))

    def start_scheduled(self, sub: Subscription, record: dict[str, Any]) -> int:
        """Start the run of one cron slot unless it exists; returns 1 if started."""
        event = prepare(record, max_bytes=self.settings.max_event_bytes, allow_system=True)
        return self._dispatch([event], parent=None, only=sub)

    def schedules(self, count: int = 3) -> list[dict[str, Any]]:
        """Each cron function, its expressions and its next ``count`` fire times."""
        return scheduler.schedules(self, count)

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None`` (never existed, or expired)."""
        raw, steps = self.store.load_runs([run_id])[0]
        return Run.from_store(run_id, raw, steps)

    def runs_for_event(self, event_id: str) -> list[Run]:
        """Every run the event started (one per subscribed function)."""
        ids = self.store.runs_for_event(event_id)
        loaded = self.store.load_runs(ids)
        runs = [Run.from_store(rid, raw, steps) for rid, (raw, steps) in zip(ids, loaded,
                                                                             strict=True)]
        return [r for r in runs if r is not None]

    def wait_for_run(self, run_id: str, timeout: float = 30.0, interval: float = 0.05) -> Run:
        """Poll until the run is completed, failed or cancelled; ``RunTimeoutError`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run is not None and run.status in FINAL:
                return run
            if time.monotonic() >= deadline:
                state = run.status if run else "not found"
                raise RunTimeoutError(f"run {run_id} still {state} after {timeout}s")
            time.sleep(interval)

    def trim_history(self) -> None:
        """Drop history entries (event and run indexes) older than the retention."""
        cutoff = now_ms() - int(self.settings.retention * 1000)
        self.store.trim_history(list(self.router.all()), cutoff)

    # -- the pump ------------------------------------------------------------------
    def pump_once(self, limit: int = 500) -> int:
        """Put due timers, stale dispatches and runs of dead workers back on the broker.

        Claims are atomic, so any number of workers may pump at once. Returns how many
        runs were enqueued.
        """
        s = self.settings
        now = now_ms()
        deadline = now + int(s.redispatch_seconds * 1000)
        control.expire_deadlines(self)
        admission.reconcile(self)
        run_ids = self.store.claim_due(now, deadline, limit)
        expired = self.store.expired_leases(now, deadline, limit)
        if expired:
            logger.info("pump: %d run(s) lost their worker; resuming them", len(expired))
        run_ids = list(dict.fromkeys([*run_ids, *expired]))
        if not run_ids:
            return 0
        sent = 0
        with self.app.producer_or_acquire() as producer, _batch(producer):
            for run_id, info in zip(run_ids, self.store.dispatch_info(run_ids), strict=True):
                if info is None or info[2] in FINAL:
                    self.store.drop_timers([run_id])
                    continue
                self.publish_run(run_id, info[0], info[1], info[3], producer)
                sent += 1
        return sent
