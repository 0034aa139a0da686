"""What the Celery integration needs from the ``Fanout`` it serves, and how it finds it.

The integration sits below the facade: the task class, the worker bootsteps and the beat
tick reach their app's ``Fanout`` through ``host_for(app)``, typed by ``Host``.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from ..engine import Engine
from ..model.settings import Settings
from ..runtime.services import Services


class Host(Protocol):
    """The extension bound to one Celery app (``Fanout`` implements it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def services(self) -> Services: ...

    def check_redis(self) -> list[str]: ...

    def run_failed(self, run_id: str) -> None:
        """A run failed in this worker: the app-wide failure hooks (``on_any_failure``)."""


_HOSTS: weakref.WeakKeyDictionary[Any, Host] = weakref.WeakKeyDictionary()


def bind(app: Any, host: Host) -> None:
    """Record ``host`` as the extension of ``app``."""
    _HOSTS[app] = host


def host_for(app: Any) -> Host | None:
    """The extension bound to ``app``, if any."""
    return _HOSTS.get(app)
