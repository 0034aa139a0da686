"""``Fanout``: the extension bound to one Celery app, and the package's one entrance.

It declares functions, sends events and answers queries; the work is done by the layers
below it, which it builds once (on first use, so ``app.conf`` may be set after
``Fanout(app)``): the store, the engine, the runtime services and the Celery broker.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from celery import Celery

from .engine import Engine
from .engine.history import RunPage
from .errors import ConfigurationError, DuplicateFunctionError, UnknownFunctionError
from .integration import beat, checks, host, signals
from .integration.bootsteps import PumpStep, add_worker_option
from .integration.publisher import CeleryBroker
from .integration.task import Function, register
from .integration.transport import use_guarded_transport
from .model.cancellation import CancelOn, Timeouts
from .model.definition import FunctionDef, Subscription, declare
from .model.durations import instant_ms
from .model.events import now_ms
from .model.forksafe import ForkSafeLock
from .model.middleware import Chain, Middleware
from .model.retry import RetryPolicy
from .model.runs import Run, RunNode
from .model.settings import Settings
from .model.typed import EventType
from .runtime import LeaseKeeper, Services
from .store.port import Store
from .store.redis import RedisStore

T = TypeVar("T")

# Threads of a Fanout's own for asend, ainvoke and acancel (made on first use).
ASYNC_THREADS = 8


def fanout_for(app: Celery) -> Fanout | None:
    """The ``Fanout`` bound to ``app``, if any."""
    found = host.host_for(app)
    return found if isinstance(found, Fanout) else None


class Fanout:
    """Durable, event-driven functions for one Celery app.

    Settings come from ``app.conf.fanout_*``; ``redis_url`` and ``key_prefix`` override
    them. Functions are registered as Celery tasks on ``app``, and a timer pump runs in
    every worker of the app.
    """

    def __init__(self, app: Celery, *, redis_url: str | None = None,
                 key_prefix: str | None = None,
                 middleware: Sequence[Middleware] = ()) -> None:
        if host.host_for(app) is not None:
            raise ConfigurationError("this Celery app already has a Fanout; create one per app")
        self.app = app
        self.middleware = Chain(middleware)
        self.event_types: dict[str, EventType[Any]] = {}
        self.functions: dict[str, Function] = {}
        self._overrides = {"redis_url": redis_url, "key_prefix": key_prefix}
        self._lock = ForkSafeLock()
        self._settings: Settings | None = None
        self._engine: Engine | None = None
        self._services: Services | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failure_hooks: list[Callable[[Run], Any]] = []
        app.steps["worker"].add(PumpStep)
        add_worker_option(app)
        host.bind(app, self)

    def __repr__(self) -> str:
        return f"<Fanout app={self.app.main!r} functions={len(self.functions)}>"

    # -- wiring (built on first use) --------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The validated ``fanout_*`` settings."""
        if self._settings is None:
            self._settings = Settings.from_app(self.app, **self._overrides)
        return self._settings

    @property
    def engine(self) -> Engine:
        """The engine services (dispatch, lifecycle, pump, cron, history)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    s = self.settings
                    use_guarded_transport(self.app)  # for this process's producers
                    store = RedisStore(s.redis_url, s.key_prefix, options=s.redis_options,
                                       compact=s.compact_records)
                    engine = Engine(store, CeleryBroker(self.app, s.fast_publish), s,
                                    self.middleware, self.event_types, lambda: self.clock())
                    for task in self.functions.values():
                        engine.router.add(task.definition.subscription())
                    self._engine = engine
        return self._engine

    @property
    def store(self) -> Store:
        """The store port holding run state (``fanout_celery.store.port.Store``)."""
        return self.engine.store

    @property
    def services(self) -> Services:
        """What each execution of a run needs (the Celery task uses it)."""
        if self._services is None:
            engine = self.engine
            self._services = Services(
                store=engine.store, effects=engine.effects, admission=engine.admission,
                leases=LeaseKeeper(engine.store, self.settings), settings=self.settings,
                middleware=self.middleware, event_types=self.event_types,
                on_start=lambda run_id, fid, n: signals.run_started.send(
                    sender=fid, run_id=run_id, executions=n),
                paused=engine.pauses.mode)
        return self._services

    def reload_settings(self) -> None:
        """Read ``app.conf`` again: the next use builds the store and engine afresh.

        For test fixtures that point an app (already used) at a test Redis; nothing else
        needs it, as settings are read on first use."""
        with self._lock:
            self._settings = self._engine = self._services = None

    def clock(self) -> int:
        """Now, in ms, for idempotency windows; tests replace it to cross a day."""
        return now_ms()

    def check_redis(self) -> list[str]:
        """Problems with the Redis that holds run state, as messages (also logged):
        an eviction policy that may drop live run keys, an app accepting pickle."""
        return checks.check_redis(self.app, self.store)

    # -- declaring --------------------------------------------------------------------
    def function(self, id: str, *, event: Any = None,
                 cron: Any = None,
                 retries: int | RetryPolicy = 4,
                 on_failure: Callable[..., Any] | None = None,
                 name: str | None = None, queue: str | None = None,
                 cron_missed: str = "latest", cron_missed_limit: int = 10,
                 cancel_on: CancelOn | Sequence[CancelOn] | None = None,
                 timeouts: Timeouts | None = None, concurrency: Any = None,
                 throttle: Any = None, rate_limit: Any = None, debounce: Any = None,
                 batch_events: Any = None, priority: Any = None, singleton: Any = None,
                 idempotency: str | None = None, checkpoints: str = "durable",
                 **task_options: Any) -> Callable[[Callable[..., Any]], Function]:
        """Declare a durable function triggered by ``event`` and/or ``cron``.

        The decorated handler takes one argument, ``ctx``. Returns the registered
        Celery task (``fanout.<id>`` unless ``name`` is given). Every option is checked
        here; see the reference for each one.
        """
        triggers = event if isinstance(event, (list, tuple)) else \
            ([] if event is None else [event])
        for trigger in triggers:
            if isinstance(trigger, EventType):
                self.register_event_type(trigger)
        names = [t.name if isinstance(t, EventType) else t for t in triggers]
        definition = declare(
            id, events=names, cron=beat.cron_text(cron), retries=retries,
            on_failure=on_failure, name=name, queue=queue, cron_missed=cron_missed,
            cron_missed_limit=cron_missed_limit,
            cancel_on=cancel_on, timeouts=timeouts, task_options=task_options,
            checkpoints=checkpoints, flow={"concurrency": concurrency, "throttle": throttle, "rate_limit": rate_limit,
                  "debounce": debounce, "batch_events": batch_events, "priority": priority,
                  "singleton": singleton, "idempotency": idempotency})
        if definition.function_id in self.functions:
            raise DuplicateFunctionError(f"a function with id {id!r} is already declared")
        if definition.on_failure and definition.on_failure in self.functions:
            raise DuplicateFunctionError(
                f"a function with id {definition.on_failure} already exists")

        def decorator(handler: Callable[..., Any]) -> Function:
            bound = definition.bind(handler)
            task = self._register(bound, task_options)
            if bound.crons:
                beat.install(self.app, self, bound)
            if on_failure is not None:
                self._register(bound.failure_handler(on_failure), {})
            return task

        return decorator

    def _register(self, definition: FunctionDef, task_options: dict[str, Any]) -> Function:
        if definition.function_id in self.functions:
            raise DuplicateFunctionError(
                f"a function with id {definition.function_id!r} is already declared")
        if definition.task_name in self.app.tasks:
            raise DuplicateFunctionError(
                f"a Celery task named {definition.task_name!r} already exists")
        task = register(self.app, self, definition, task_options)
        self.functions[definition.function_id] = task
        if self._engine is not None:
            self._engine.router.add(definition.subscription())
        return task

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

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware after those already added (see fanout_celery.middleware)."""
        self.middleware.add(middleware)

    def publish_subscriptions(self) -> None:
        """Publish this process's functions, so processes that import none of them (a web
        app) route events to them. Workers do it at start and every minute."""
        self.engine.router.publish()

    # -- sending ----------------------------------------------------------------------
    def send(self, events: Any) -> list[str]:
        """Publish one event or a list of them; every subscribed function gets one run
        per event. Returns the event ids. A batch with one bad event sends none.

        An iterator or generator is sent as a stream, 500 events at a time, without
        holding it all; a bad event stops it at its chunk, after the chunks before it.

        While Redis or the broker is unreachable this raises their connection error
        (``redis.ConnectionError``, ``kombu.exceptions.OperationalError``); sending the
        same events again is safe when they carry their own ids (an id starts one run)."""
        return self.engine.sender.send(events)

    def invoke(self, function: Function | str, data: dict[str, Any] | None = None) -> str:
        """Start a run of ``function`` now (also for cron functions); returns its run id."""
        return self.engine.sender.invoke(self._subscription(function), data)

    def _subscription(self, function: Any) -> Subscription:
        fid = function if isinstance(function, str) else getattr(function, "function_id", None)
        if not isinstance(fid, str):
            raise UnknownFunctionError(f"expected a fanout function or its id, got {function!r}")
        sub = self.engine.router.get(fid)
        if sub is None:
            raise UnknownFunctionError(f"no function {fid!r} is declared or published")
        return sub

    # -- runs -------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None`` (never existed, or expired)."""
        return self.engine.history.get_run(run_id)

    def runs_for_event(self, event_id: str) -> list[Run]:
        """Every run the event started (one per subscribed function)."""
        return self.engine.history.runs_for_event(event_id)

    def wait_for_run(self, run_id: str, timeout: float = 30.0) -> Run:
        """Block until the run is final (completed, failed, cancelled or skipped) and
        return it; ``RunTimeoutError`` after ``timeout`` seconds. It blocks on Redis,
        woken when the run ends, rather than polling."""
        return self.engine.history.wait_for_run(run_id, timeout)

    def list_runs(self, *, function: str | None = None, status: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  event_id: str | None = None, limit: int = 50, offset: int = 0) -> RunPage:
        """Runs newest first, filtered by function, status, creation time or event."""
        if function is not None:
            self._subscription(function)
        return self.engine.history.list_runs(
            function=function, status=status,
            since_ms=None if since is None else instant_ms(since),
            until_ms=None if until is None else instant_ms(until),
            event_id=event_id, limit=limit, offset=offset)

    def list_events(self, *, name: str | None = None, since: datetime | None = None,
                    limit: int = 50) -> list[tuple[dict[str, Any], list[str]]]:
        """Stored events, newest first, each with the ids of the runs it started."""
        return self.engine.history.list_events(
            name=name, since_ms=None if since is None else instant_ms(since), limit=limit)

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        """A stored event (as sent, with its id and ts), or None once it expired."""
        return self.engine.history.get_event(event_id)

    def replay(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """Send stored events again as new events (new ids, ``replay_of`` set)."""
        return self.engine.history.replay(events)

    def find_run_id(self, text: str) -> str:
        """The run id that ``text`` is, or starts (as the CLI and the dashboard print
        them, 12 characters), among recent runs; ``text`` itself when none matches."""
        return self.engine.history.resolve_id(text)

    def rerun(self, run_id: str, from_step: str | None = None) -> str:
        """Start a new run of the same function and event, reusing the recorded outputs of
        the steps before ``from_step``; returns the new run's id."""
        return self.engine.history.rerun(run_id, from_step)

    def run_tree(self, run_id: str, depth: int = 3) -> RunNode | None:
        """A run with the runs its steps started, ``depth`` levels down."""
        return self.engine.history.tree(run_id, depth)

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel a run: at once when it is queued, sleeping or waiting; at its next step
        boundary when it is executing. Emits ``fanout/function.cancelled``. Returns
        ``cancelled``, ``requested``, ``final`` (already over) or ``missing``."""
        return self.engine.lifecycle.cancel(run_id, reason)

    def cancel_runs(self, function: Function | str, started_after: datetime | None = None,
                    started_before: datetime | None = None) -> int:
        """Cancel the runs of ``function`` created in the time range; returns how many."""
        sub = self._subscription(function)
        return self.engine.lifecycle.cancel_runs(
            sub.function_id, None if started_after is None else instant_ms(started_after),
            None if started_before is None else instant_ms(started_before))

    def pause(self, function: Function | str, mode: str = "hold") -> None:
        """Pause ``function``: no run of it starts, runs under way stop at their next step
        boundary; ``mode`` "hold" keeps the runs for ``resume``, "skip" skips new ones."""
        self.engine.pauses.pause(self._subscription(function).function_id, mode)

    def resume(self, function: Function | str) -> int:
        """Resume a paused function; its held runs go on. Returns how many."""
        return self.engine.pauses.resume(self._subscription(function).function_id)

    def paused(self) -> dict[str, str]:
        """The paused functions, and how ("hold" or "skip")."""
        return self.engine.store.paused()

    def failed_runs(self, function: Function | str, since: datetime | None = None,
                    until: datetime | None = None) -> list[str]:
        """Ids of the failed runs of ``function`` created in the range, newest first."""
        return self.engine.history.failed(
            self._subscription(function).function_id,
            None if since is None else instant_ms(since),
            None if until is None else instant_ms(until))

    def rerun_failed(self, function: Function | str, since: datetime | None = None,
                     until: datetime | None = None, *, dry_run: bool = False) -> list[str]:
        """Rerun the failed runs of ``function`` created in the range, each from its failed
        step; returns the new ids (with ``dry_run``, the failed runs: nothing is written)."""
        failed = self.failed_runs(function, since, until)
        return failed if dry_run else self.engine.history.rerun_many(failed[::-1])

    def on_any_failure(self, hook: Callable[[Run], Any]) -> Callable[[Run], Any]:
        """A decorator: ``hook(run)`` runs in the worker for every failed run of any
        function of this app (its errors are logged, never raised into the run)."""
        self._failure_hooks.append(hook)
        return hook

    def run_failed(self, run_id: str) -> None:
        """The worker's call when a run failed: the ``on_any_failure`` hooks."""
        self.engine.history.run_failed(run_id, self._failure_hooks)

    # -- from async code: writes run their sync code in a thread of this Fanout's own
    # (kombu's publish is synchronous); reads and waits are awaited on redis.asyncio.
    async def asend(self, events: Any) -> list[str]:
        """``send``, awaited: the event loop runs on while Redis or the broker is slow."""
        return await self._in_thread(self.send, events)

    async def ainvoke(self, function: Function | str,
                      data: dict[str, Any] | None = None) -> str:
        """``invoke``, awaited."""
        return await self._in_thread(self.invoke, function, data)

    async def acancel(self, run_id: str, reason: str = "cancelled") -> str:
        """``cancel``, awaited."""
        return await self._in_thread(self.cancel, run_id, reason)

    async def aget_run(self, run_id: str) -> Run | None:
        """``get_run``, on redis.asyncio."""
        return await self.engine.history.aget_run(run_id)

    async def await_run(self, run_id: str, timeout: float = 30.0) -> Run:
        """``wait_for_run``, on redis.asyncio: it blocks on Redis until the run ends,
        without a thread or a polling sleep; ``RunTimeoutError`` after ``timeout``."""
        return await self.engine.history.await_run(run_id, timeout)

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=ASYNC_THREADS, thread_name_prefix="fanout-async")
        # The caller's context variables (a trace, a request id) go with the call.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, context.run, call, *args)

    def schedules(self, count: int = 3) -> list[dict[str, Any]]:
        """Each cron function, its expressions and its next ``count`` fire times."""
        return self.engine.cron.schedules(count)
