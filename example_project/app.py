"""The example's Celery app and its ``Fanout``.

Broker and fanout state share one Redis, ``$FANOUT_REDIS_URL``
(``redis://localhost:6379/0`` when unset). Start a worker with::

    FANOUT_REDIS_URL=redis://localhost:6379/0 celery -A example_project.app worker
"""

from __future__ import annotations

import os

from celery import Celery

from fanout_celery import Fanout

REDIS_URL = os.environ.get("FANOUT_REDIS_URL", "").strip() or "redis://localhost:6379/0"

app = Celery("signup-flow", broker=REDIS_URL)
app.conf.update(
    fanout_redis_url=REDIS_URL,
    broker_connection_retry_on_startup=True,
    # Functions keep their state in fanout's store; Celery's result backend is not needed.
    result_backend=None,
    # A short pump interval keeps the demo's retries snappy (the default is 0.2 s).
    fanout_pump_interval=0.05,
)

fanout = Fanout(app)

# Imported last, as it declares its functions on ``fanout`` above: a worker started with
# ``-A example_project.app`` then has them registered.
from example_project import functions  # noqa: E402, F401
