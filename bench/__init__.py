"""Benchmarks of fanout_celery against plain Celery: ``python -m bench [--quick]``.

Every figure is measured twice in the same run, once through fanout and once through an
equivalent plain-Celery implementation, on the same worker processes and the same Redis
servers, and printed side by side with their ratio. Nothing here passes or fails: the
output is figures (see BENCHMARKS.md for how to read them).

Modules: ``app`` (the Celery app, its fanout functions and plain tasks, imported by the
workers too), ``workers`` (worker subprocesses and their CPU/RSS), ``probes`` (Redis round
trip counting, Redis INFO, machine description), ``harness`` (sizes, the summary table,
waiting for completion), ``throughput`` (figures 1, 2 and 5), ``dispatch`` (the sender
process of figure 1), ``latency`` (figures 3 and 4), ``memory`` (figure 6), ``flow``
(figure 7, flow control, with its own app and worker) and ``main`` (the command line).
"""
