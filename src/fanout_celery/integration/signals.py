"""fanout's own signals, in Celery's style (``celery.utils.dispatch.Signal``).

Connect receivers as you would to ``celery.signals``::

    from fanout_celery import signals

    @signals.step_retried.connect
    def count_retry(sender, run_id, step_id, exception, attempt, **kwargs):
        metrics.increment("fanout.step_retried", tags={"function": sender})

``sender`` is the function id. They fire in the worker process that executes the run:

- ``run_started(run_id, executions)``: an attempt took the run's lease (``executions``
  counts the attempts, 1 for the first);
- ``step_retried(run_id, step_id, exception, attempt)``: a step (``step_id`` None: the
  handler body) failed and parks until its back-off ends; Celery's own ``task_retry``
  fires too;
- ``run_parked(run_id, status, wake_at)``: the run parks (sleeping, waiting, queued for
  a retry; ``wake_at`` a datetime or None);
- ``run_failed(run_id, exception)``: the run failed (``exception``: the error that failed
  it); Celery's ``task_failure`` fires with the same exception;
- ``run_finished(run_id, status, output)``: the run completed or was cancelled.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

run_started = Signal(name="fanout_run_started", providing_args={"run_id", "executions"})
step_retried = Signal(name="fanout_step_retried",
                      providing_args={"run_id", "step_id", "exception", "attempt"})
run_parked = Signal(name="fanout_run_parked", providing_args={"run_id", "status", "wake_at"})
run_failed = Signal(name="fanout_run_failed", providing_args={"run_id", "exception"})
run_finished = Signal(name="fanout_run_finished",
                      providing_args={"run_id", "status", "output"})

__all__ = ["run_failed", "run_finished", "run_parked", "run_started", "step_retried"]
