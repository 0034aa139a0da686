"""Django settings of the example project (SQLite, Redis from the environment)."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

REDIS_URL = os.environ.get("FANOUT_REDIS_URL", "").strip() or "redis://localhost:6379/0"

SECRET_KEY = "example-project-only"  # not a secret: this project never serves requests
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = [
    "django_celery_beat",
    "example_project.django_app.signups",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SIGNUPS_DB", "").strip()
        or str(Path(tempfile.gettempdir()) / "fanout-django-example.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- Celery: app.config_from_object("django.conf:settings", namespace="CELERY") ----------
CELERY_BROKER_URL = REDIS_URL
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The project's own periodic tasks; fanout's cron entry is merged in, never replacing them.
CELERY_BEAT_SCHEDULE = {
    "signups-purge-unwelcomed": {
        "task": "signups.purge_unwelcomed",
        "schedule": timedelta(hours=6),
    },
}

# -- fanout_celery: app.conf.fanout_* -----------------------------------------------------
CELERY_FANOUT_REDIS_URL = REDIS_URL  # the default (the broker's Redis), spelled out
CELERY_FANOUT_KEY_PREFIX = "signups"
CELERY_FANOUT_RETENTION = timedelta(days=3)
