"""``celery fanout ...``: see and operate runs from the ``celery`` command (entry point
``celery.commands``: ``fanout = fanout_celery.cli:fanout``)."""

from .commands import fanout

__all__ = ["fanout"]
