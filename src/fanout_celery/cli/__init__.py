"""``celery fanout ...``: see and operate runs from the ``celery`` command (entry point
``celery.commands``: ``fanout = fanout_celery.cli:fanout``)."""

from . import commands, operate  # noqa: F401 - they add their commands to the group
from .group import fanout

__all__ = ["fanout"]
