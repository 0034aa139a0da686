"""The dashboard: runs, one run's waterfall, events and functions in a browser.

``celery -A proj fanout dashboard`` serves it (on 127.0.0.1:5556 by default), and
``app(fanout)`` is the same ASGI application for a Django or FastAPI project to mount
under a path. Pages are rendered on the server (Starlette and Jinja2, the ``dashboard``
extra); every action (cancel, rerun, replay) is a POST with a CSRF token, refused
without credentials when the dashboard has any, and absent in read-only mode.
"""

from __future__ import annotations

from .web import DashboardConfig, app

__all__ = ["DashboardConfig", "app"]
