"""The weekly-activity example: a cron function fans out one event per user, and a
second function emails each user their week, with per-step retries.

Run it end to end with ``python -m example_project`` (or ``tox -e demo``); run a worker
for it yourself with ``celery -A example_project.app worker``.

``example_project.django_app`` is a separate, smaller example: functions in a Django
project (``tasks.py`` autodiscovered, ``CELERY_FANOUT_*`` settings, django-celery-beat).
"""
