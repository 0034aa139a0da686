"""fanout functions in a Django project: the standard Celery layout, nothing more.

- ``celery.py`` builds the Celery app from Django's settings (``CELERY_*``, including
  ``CELERY_FANOUT_*``), creates its ``Fanout`` and autodiscovers each app's ``tasks.py``;
- ``signups/tasks.py`` declares the functions (one triggered by an event sent when a
  signup is committed, one cron) next to a plain Celery task;
- ``settings.py`` selects django-celery-beat's ``DatabaseScheduler``: the ``fanout.cron``
  entry is synced into its tables beside the project's own ``CELERY_BEAT_SCHEDULE``.

Run it (Redis at ``$FANOUT_REDIS_URL``, SQLite at ``$SIGNUPS_DB``)::

    export DJANGO_SETTINGS_MODULE=example_project.django_app.settings
    django-admin migrate
    celery -A example_project.django_app worker -l info
    celery -A example_project.django_app beat -l info
"""

# Imported with the project, as Django's Celery guide recommends: the app (and its
# Fanout) exist before any tasks.py declares functions on it.
from .celery import app as celery_app

__all__ = ["celery_app"]
