"""The Celery integration: the task each function becomes, the worker bootsteps (timer
pump), the guarded Redis transport, the beat entry of cron functions, and the broker publisher."""
