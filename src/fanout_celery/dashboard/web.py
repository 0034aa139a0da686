"""The dashboard's ASGI application (Starlette and Jinja2): pages, actions, access."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import FanoutError
from ..fanout import Fanout
from ..model.durations import parse_duration
from ..model.records import STATUSES
from ..model.runs import Run
from . import views
from .metrics import render_metrics

TEMPLATES = Path(__file__).with_name("templates")
# The query-string fields of the runs list's filter (page and refresh are not filters).
FILTER_FIELDS = ("function", "status", "since", "until", "event", "name", "parent", "q")
BULK_ACTIONS = ("cancel", "rerun")


@dataclass(frozen=True)
class DashboardConfig:
    """Who may see and do what. ``basic_auth``: ``"user:password"`` (Flower's option);
    ``token``: a bearer token (``Authorization: Bearer <token>`` or ``?token=``, kept in
    a cookie); with neither, everything is open to whoever reaches the address (which is
    127.0.0.1 unless chosen otherwise). ``read_only``: pages without actions."""

    basic_auth: str | None = None
    token: str | None = None
    read_only: bool = False
    secret: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        if self.basic_auth is not None and ":" not in self.basic_auth:
            raise FanoutError("basic_auth is 'user:password'")


def app(fanout: Fanout, config: DashboardConfig | None = None, **options: Any) -> Starlette:
    """The dashboard of ``fanout`` as an ASGI application (mount it under any path)."""
    cfg = config or DashboardConfig(**options)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    env.filters["replace_page"] = lambda params, page: urlencode({**dict(params), "page": page})
    dashboard = Dashboard(fanout, cfg, env)
    return Starlette(routes=[
        Route("/", dashboard.runs),
        Route("/bulk", dashboard.bulk),
        Route("/bulk", dashboard.bulk_apply, methods=["POST"]),
        Route("/runs/{run_id}", dashboard.run),
        Route("/runs/{run_id}/cancel", dashboard.cancel, methods=["POST"]),
        Route("/runs/{run_id}/rerun", dashboard.rerun, methods=["POST"]),
        Route("/events", dashboard.events),
        Route("/events/{event_id}/replay", dashboard.replay, methods=["POST"]),
        Route("/functions", dashboard.functions),
        Route("/metrics", dashboard.metrics),
    ])


class Dashboard:
    """The request handlers."""

    def __init__(self, fanout: Fanout, config: DashboardConfig, env: Environment) -> None:
        self.fanout = fanout
        self.config = config
        self.env = env

    # -- access ------------------------------------------------------------------------
    def _allowed(self, request: Request) -> bool:
        cfg = self.config
        if cfg.basic_auth is None and cfg.token is None:
            return True
        header = request.headers.get("authorization", "")
        if cfg.basic_auth is not None and header.lower().startswith("basic "):
            try:
                given = base64.b64decode(header[6:]).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            if hmac.compare_digest(given, cfg.basic_auth):
                return True
        if cfg.token is not None:
            given = header[7:] if header.lower().startswith("bearer ") else \
                request.query_params.get("token") or request.cookies.get("fanout_token", "")
            if given and hmac.compare_digest(given, cfg.token):
                return True
        return False

    def _refused(self) -> Response:
        if self.config.basic_auth is not None:
            return PlainTextResponse("authentication required", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="fanout"'})
        return PlainTextResponse("a valid token is required", status_code=401)

    def _csrf(self, request: Request) -> str:
        """A token bound to this dashboard's secret and the visitor's session cookie."""
        session = request.cookies.get("fanout_session") or ""
        return hmac.new(self.config.secret.encode(), session.encode(),
                        hashlib.sha256).hexdigest()

    def _page(self, request: Request, template: str, status: int = 200,
              **context: Any) -> Response:
        session = request.cookies.get("fanout_session") or secrets.token_hex(16)
        request.cookies["fanout_session"] = session
        html = self.env.get_template(template).render(
            request=request, read_only=self.config.read_only, csrf=self._csrf(request),
            statuses=STATUSES, base=str(request.scope.get("root_path", "")).rstrip("/"),
            **context)
        response = HTMLResponse(html, status_code=status)
        response.set_cookie("fanout_session", session, httponly=True, samesite="strict")
        token = request.query_params.get("token")
        if token and self.config.token and hmac.compare_digest(token, self.config.token):
            response.set_cookie("fanout_token", token, httponly=True, samesite="strict")
        return response

    async def _action(self, request: Request) -> Response | dict[str, str]:
        """The form of an action, or the response refusing it."""
        if not self._allowed(request):
            return self._refused()
        if self.config.read_only:
            return PlainTextResponse("this dashboard is read-only", status_code=403)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not hmac.compare_digest(form.get("csrf", ""), self._csrf(request)) or \
                not request.cookies.get("fanout_session"):
            return PlainTextResponse("the form expired (CSRF check failed): reload the page",
                                     status_code=403)
        if form.get("confirm") != "yes":
            return PlainTextResponse("not confirmed", status_code=400)
        return form

    def _error(self, request: Request, message: str, status: int = 400) -> Response:
        return self._page(request, "error.html", status=status, message=message)

    # -- pages -------------------------------------------------------------------------
    def _filter(self, request: Request) -> views.RunFilter:
        """The runs list's filters, from the query string (``FanoutError`` if one is not
        understood). ``since``/``until``: how long ago (``1h``, ``7d``)."""
        q = request.query_params
        now = datetime.now(UTC)

        def ago(name: str) -> datetime | None:
            text = q.get(name)
            return now - timedelta(seconds=parse_duration(text, name)) if text else None

        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise FanoutError(f"unknown status {status!r}")
        function = q.get("function") or None
        if function is not None and function not in self.fanout.engine.router.all():
            raise FanoutError(f"unknown function {function!r}")
        parent = q.get("parent") or None
        return views.RunFilter(
            function=function, status=status, since=ago("since"), until=ago("until"),
            event_id=q.get("event") or None, event_name=q.get("name") or None,
            parent=self.fanout.find_run_id(parent) if parent else None,
            search=q.get("q") or None)

    async def runs(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        q = request.query_params
        try:
            page = max(1, int(q.get("page") or 1))
            data = views.runs_view(self.fanout, self._filter(request), page)
        except (FanoutError, ValueError) as exc:
            return self._error(request, str(exc))
        functions = sorted(self.fanout.engine.router.all())
        return self._page(request, "runs.html", filters=dict(q), functions=functions,
                          refresh=q.get("refresh") == "on",
                          query=urlencode({k: v for k, v in q.items()
                                           if k in FILTER_FIELDS and v}), **data)

    def _bulk_targets(self, request: Request, action: str,
                      ) -> Response | tuple[list[Run], bool]:
        """The runs ``action`` applies to under the request's filter, or the error page."""
        if action not in BULK_ACTIONS:
            return self._error(request, "a bulk action is cancel or rerun")
        try:
            return views.bulk_targets(self.fanout, self._filter(request), action)
        except (FanoutError, ValueError) as exc:
            return self._error(request, str(exc))

    async def bulk(self, request: Request) -> Response:
        """The dry run of a bulk action: how many runs the current filter selects, the
        first of them, and the form that applies the action."""
        if not self._allowed(request):
            return self._refused()
        if self.config.read_only:
            return PlainTextResponse("this dashboard is read-only", status_code=403)
        action = request.query_params.get("action", "")
        found = self._bulk_targets(request, action)
        if isinstance(found, Response):
            return found
        targets, more = found
        fields = {k: v for k, v in request.query_params.items() if k in FILTER_FIELDS and v}
        return self._page(request, "bulk.html", action=action, targets=targets, more=more,
                          fields=fields, limit=views.BULK, human=views.human)

    async def bulk_apply(self, request: Request) -> Response:
        form = await self._action(request)
        if isinstance(form, Response):
            return form
        # The filter travels in the query string, as on the dry run's page.
        found = self._bulk_targets(request, form.get("action", ""))
        if isinstance(found, Response):
            return found
        action = form["action"]
        targets, _ = found
        done = 0
        for run in targets:
            try:
                if action == "cancel":
                    outcome = self.fanout.cancel(run.id, "cancelled from the dashboard (bulk)")
                    done += outcome in ("cancelled", "requested")
                else:
                    self.fanout.rerun(run.id)
                    done += 1
            except FanoutError:
                continue  # ended or expired meanwhile
        verb = "cancelled" if action == "cancel" else "reran"
        return self._back(request, "", f"{verb} {done} of {len(targets)} runs")

    async def run(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        data = views.run_view(self.fanout, request.path_params["run_id"])
        if data is None:
            return self._error(request, f"no run {request.path_params['run_id']} (unknown, or "
                               "expired after the retention)", status=404)
        return self._page(request, "run.html", **data)

    async def events(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        name = request.query_params.get("name") or None
        found = self.fanout.list_events(name=name, limit=100)
        rows = [{"event": e, "runs": runs, "data": views.pretty(e.get("data")),
                 "when": views.human(datetime.fromtimestamp(int(e.get("ts", 0)) / 1000,
                                                            tz=UTC))} for e, runs in found]
        return self._page(request, "events.html", rows=rows, name=name or "")

    async def functions(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        return self._page(request, "functions.html", functions=views.functions_view(self.fanout))

    async def metrics(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        body, content_type = render_metrics(self.fanout)
        return Response(body, media_type=content_type)

    # -- actions -----------------------------------------------------------------------
    async def cancel(self, request: Request) -> Response:
        form = await self._action(request)
        if isinstance(form, Response):
            return form
        run_id = request.path_params["run_id"]
        outcome = self.fanout.cancel(run_id, "cancelled from the dashboard")
        return self._back(request, f"runs/{run_id}", f"cancel: {outcome}")

    async def rerun(self, request: Request) -> Response:
        form = await self._action(request)
        if isinstance(form, Response):
            return form
        run_id = request.path_params["run_id"]
        run = self.fanout.get_run(run_id)
        if run is not None and not run.finished:
            return self._error(request, f"run {run_id} is still {run.status}: cancel it or "
                               "wait for its end before running it again", status=409)
        try:
            fresh = self.fanout.rerun(run_id, form.get("from_step") or None)
        except FanoutError as exc:
            return self._error(request, str(exc))
        return self._back(request, f"runs/{fresh}", f"rerun of {run_id}")

    async def replay(self, request: Request) -> Response:
        form = await self._action(request)
        if isinstance(form, Response):
            return form
        event = self.fanout.get_event(request.path_params["event_id"])
        if event is None:
            return self._error(request, "no such event (expired?)", status=404)
        self.fanout.replay([event])
        return self._back(request, "events", "replayed")

    @staticmethod
    def _back(request: Request, path: str, note: str) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return RedirectResponse(f"{root}/{path}?note={note}", status_code=303)
