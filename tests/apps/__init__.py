"""Importable Celery apps that tests run in real worker subprocesses."""
