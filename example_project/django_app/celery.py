"""The project's Celery app: settings from Django, a Fanout, tasks.py autodiscovered."""

from __future__ import annotations

import os

from celery import Celery

from fanout_celery import Fanout

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_app.settings")

app = Celery("django_app")
# Every CELERY_* setting, e.g. CELERY_FANOUT_KEY_PREFIX -> app.conf.fanout_key_prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Settings are read on first use, so this may come before Django is set up.
fanout = Fanout(app)

# Imports each installed app's tasks.py (in workers and beat at start-up): the functions
# declared there register on this app, and cron functions add the fanout.cron beat entry.
app.autodiscover_tasks()
