"""Plain helpers shared by test modules (import them as ``from support import ...``;
a ``conftest`` module cannot be imported reliably once subfolders have their own)."""

from __future__ import annotations

from celery import Celery


def configure_app(app: Celery, url: str) -> None:
    """Test settings: fast pump, short leases (crash tests resume quickly)."""
    app.conf.update(
        broker_url=url,
        result_backend=None,
        fanout_pump_interval=0.05,
        fanout_lease_seconds=3,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="celery",
    )
