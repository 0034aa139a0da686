"""An async web app (FastAPI) that sends events and awaits runs, beside its workers.

``worker.py`` declares the functions and is what workers run; ``web.py`` is the web app,
which declares none (it routes through the subscriptions the workers publish) and never
blocks its event loop on Redis or the broker::

    FANOUT_REDIS_URL=redis://localhost:6379/0 celery -A example_project.fastapi_app.worker worker
    FANOUT_REDIS_URL=redis://localhost:6379/0 uvicorn example_project.fastapi_app.web:app
"""
