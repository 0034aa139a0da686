"""The Django example (``example_project/django_app``): functions declared in an app's
``tasks.py`` and autodiscovered, settings from ``CELERY_FANOUT_*``, a real in-process
worker, and the ``fanout.cron`` beat entry in django-celery-beat's tables.

Django's settings are process-wide: the project is set up once for this module, with its
SQLite database in a temporary directory and the test session's real Redis.
"""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis

pytest.importorskip("django")
pytest.importorskip("django_celery_beat")

from fanout_celery.model.events import derived_id  # noqa: E402
from fanout_celery.store.redis.keys import Keys  # noqa: E402
from fanout_celery.testing import run_function  # noqa: E402

pytestmark = pytest.mark.integration

SETTINGS = "example_project.django_app.settings"


@pytest.fixture(scope="module")
def project(redis_server, tmp_path_factory):
    """Django set up on a migrated SQLite database; the example's Celery app and Fanout."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    if settings.configured and settings.SETTINGS_MODULE != SETTINGS:
        pytest.skip(f"Django is already set up with {settings.SETTINGS_MODULE}")
    db = tmp_path_factory.mktemp("django") / "signups.sqlite3"
    with pytest.MonkeyPatch.context() as env:
        # Read by settings.py and by the Celery app (its Django fix-up) as they load.
        env.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        env.setenv("SIGNUPS_DB", str(db))
        env.setenv("FANOUT_REDIS_URL", redis_server)
        django.setup()
        call_command("migrate", verbosity=0)
        from example_project.django_app.celery import app, fanout

        app.conf.update(worker_hijack_root_logger=False,
                        broker_connection_retry_on_startup=True)
        client = redis.Redis.from_url(redis_server)
        for key in client.scan_iter("signups:*"):  # an earlier session's runs
            client.delete(key)
        client.close()
        yield SimpleNamespace(app=app, fanout=fanout, redis_url=redis_server)


def test_fanout_settings_come_from_celery_fanout_django_settings(project):
    settings = project.fanout.settings

    assert settings.key_prefix == "signups"  # CELERY_FANOUT_KEY_PREFIX
    assert settings.retention == timedelta(days=3).total_seconds()
    assert settings.redis_url == project.redis_url  # CELERY_FANOUT_REDIS_URL


def test_autodiscovery_registers_the_functions_of_tasks_py(project):
    project.app.loader.import_default_modules()  # what a worker or beat does at start

    assert {"signups-welcome", "signups-daily-report"} <= set(project.fanout.functions)
    assert {"fanout.signups-welcome", "fanout.signups-daily-report",
            "signups.purge_unwelcomed"} <= set(project.app.tasks)


def test_a_committed_signup_is_welcomed_by_a_real_worker(project, worker):
    from example_project.django_app.signups.models import Signup, sign_up

    project.app.loader.import_default_modules()
    with worker(project.app):
        signup = sign_up("ann@example.com")
        run_id = derived_id("signups-welcome", f"signup-{signup.pk}")
        run = project.fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == {"welcomed": "ann@example.com"}
    assert [s.id for s in run.steps] == ["load-signup", "send-welcome", "mark-welcomed"]
    assert Signup.objects.get(pk=signup.pk).welcomed_at is not None
    # The run lives under CELERY_FANOUT_KEY_PREFIX.
    client = redis.Redis.from_url(project.redis_url)
    try:
        assert client.exists(Keys("signups").run(run_id))
    finally:
        client.close()


def test_a_rolled_back_signup_sends_no_event(project):
    from django.db import transaction

    from example_project.django_app.signups.models import sign_up

    with transaction.atomic():
        signup = sign_up("rolled-back@example.com")
        transaction.set_rollback(True)

    assert project.fanout.get_run(derived_id("signups-welcome", f"signup-{signup.pk}")) \
        is None


def test_the_welcome_function_runs_in_process_against_the_django_database(project):
    from example_project.django_app.signups.models import SIGNED_UP, Signup
    from example_project.django_app.signups.tasks import welcome

    signup = Signup.objects.create(email="bo@example.com")

    result = run_function(welcome, {"name": SIGNED_UP, "data": {"signup_id": signup.pk}},
                          steps={"send-welcome": {"to": "bo@example.com"}})

    assert result.output == {"welcomed": "bo@example.com"}
    assert Signup.objects.get(pk=signup.pk).welcomed_at is not None


def test_the_fanout_cron_entry_reaches_django_celery_beat_tables(project):
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    project.app.loader.import_default_modules()  # as `celery beat` does before its scheduler
    scheduler = DatabaseScheduler(app=project.app)  # syncs app.conf.beat_schedule

    cron = PeriodicTask.objects.get(name="fanout.cron signups-daily-report")
    assert cron.task == "fanout.cron"
    assert json.loads(cron.kwargs) == {"function": "signups-daily-report"}
    # "TZ=UTC 0 8 * * *" in a UTC project: a crontab row, not a tick every second.
    assert cron.interval is None
    assert (cron.crontab.minute, cron.crontab.hour, cron.crontab.day_of_week) == ("0", "8", "*")
    assert str(cron.crontab.timezone) == "UTC"
    assert cron.enabled
    mine = PeriodicTask.objects.get(name="signups-purge-unwelcomed")
    assert mine.task == "signups.purge_unwelcomed"
    assert (mine.interval.every, mine.interval.period) == (6 * 3600, "seconds")
    assert {"fanout.cron signups-daily-report",
            "signups-purge-unwelcomed"} <= set(scheduler.schedule)
