"""The ``celery fanout`` group and what its commands share: the app's ``Fanout``, times,
one-line errors.

Installed through the ``celery.commands`` entry point, so it works against the app given
with ``celery -A proj``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from ..errors import FanoutError
from ..fanout import Fanout, fanout_for
from ..model.durations import parse_duration
from ..model.events import now_ms
from ..store.redis import is_transient


def _fanout(ctx: click.Context) -> Fanout:
    app = ctx.obj.app if ctx.obj is not None and hasattr(ctx.obj, "app") else None
    if app is None:
        raise click.UsageError("give the Celery app with -A, e.g. celery -A proj fanout runs")
    fanout = fanout_for(app)
    if fanout is None:
        app.loader.import_default_modules()
        fanout = fanout_for(app) or Fanout(app)
    try:
        fanout.settings  # noqa: B018 - validated here: a bad setting is a clean CLI error
    except FanoutError as exc:
        raise click.ClickException(str(exc)) from None
    return fanout


def _when(text: str | None) -> datetime | None:
    """An ISO time, or a duration back from now ("10m", "2h", "7d")."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when
    except ValueError:
        pass
    try:
        back = parse_duration(text, "--since/--until")
        return datetime.fromtimestamp(now_ms() / 1000 - back, tz=UTC)
    except FanoutError as exc:
        raise click.BadParameter(f"{text!r}: use an ISO time or a duration like 10m, 2h, "
                                 f"7d ({exc})") from None


class _Group(click.Group):
    """Every command's errors as one line: a store or broker that cannot be reached is
    ``Error: cannot reach ...``, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except FanoutError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, OSError) or \
                    type(exc).__module__.startswith(("kombu", "amqp", "redis")):
                raise click.ClickException(
                    f"cannot reach Redis or the broker ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); is it running, and is the URL right?") from None
            raise


def _confirmed(question: str) -> bool:
    """Asked on the terminal; no answer (no terminal, end of input) is no."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        return False


def _run_id(fo: Fanout, text: str) -> str:
    """A run id, or the prefix of one (the 12 characters tables and trees print)."""
    return fo.find_run_id(text)



@click.group(name="fanout", cls=_Group)
def fanout() -> None:
    """Durable functions: list functions, send events, inspect and operate runs.

    \b
    Example:
        celery -A proj fanout runs --status failed --since 2h
    """
