"""The engine: events to runs, and everything that happens to runs from outside their
execution. It talks to the store port below it and to a ``Broker`` port for messages;
it knows nothing of Celery."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..model.middleware import Chain
from ..model.settings import Settings
from ..model.typed import EventType
from ..store.port import Store
from .admission import Admission
from .archive import Archiver
from .cron import CronScheduler
from .dispatcher import Dispatcher
from .effects import EngineEffects
from .history import History
from .pauses import Pauses
from .ports import Broker
from .pump import Pump
from .router import Router
from .sending import Sender


class Engine:
    """Every engine service over one store and one broker, built once."""

    def __init__(self, store: Store, broker: Broker, settings: Settings, middleware: Chain,
                 event_types: Mapping[str, EventType[Any]],
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self.router = Router(store)
        self.admission = Admission(store, settings, clock)
        self.dispatcher = Dispatcher(store, self.router, broker, self.admission, settings)
        self.lifecycle = self.dispatcher.lifecycle
        self.sender = Sender(self.dispatcher.dispatch, settings, middleware, event_types)
        self.effects = EngineEffects(self.sender, self.dispatcher, self.router)
        self.archiver = None if settings.history_sink is None else \
            Archiver(store, settings.history_sink)
        self.pump = Pump(store, self.dispatcher, self.admission, self.router, settings,
                         archiver=self.archiver)
        self.pauses = Pauses(store, self.dispatcher, self.router)
        self.pump.pauses = self.pauses
        self.cron = CronScheduler(store, self.router, self.dispatcher, settings, self.pauses)
        self.history = History(store, self.router, self.sender, broker, settings)


__all__ = ["Broker", "Engine"]
