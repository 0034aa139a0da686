"""The Celery integration: the task each function becomes, the worker bootsteps (timer
pump, reconnect guard), the beat entry of cron functions, and the broker publisher."""
