"""The dashboard's pages, actions and access, through its ASGI application (an HTTP client
in-process), against a real Redis and a real worker; the worker-side Prometheus counters.
The same pages in a real browser: ``tests/test_dashboard_browser.py``."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from fanout_celery import Event, Fanout, RetryPolicy
from fanout_celery.dashboard import DashboardConfig, app
from fanout_celery.dashboard import app as app_of
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


def get(application: Any, path: str, **kw: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
            return await http.get(path, **kw)
    return asyncio.run(call())


def post_form(application: Any, page: str, action: str, data: dict[str, str],
              **kw: Any) -> httpx.Response:
    """GET ``page`` (for the session cookie and the CSRF token), then POST ``action``."""
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
            shown = await http.get(page, **kw)
            csrf = re.search(r'name="csrf" value="(\w+)"', shown.text)
            form = {"csrf": csrf.group(1) if csrf else "", **data}
            return await http.post(action, data=form, **kw)
    return asyncio.run(call())


@pytest.fixture
def shop(app: Any, fanout: Fanout, worker: Any) -> Any:
    """Functions with runs of each kind: completed (with a child), failed, sleeping."""

    @fanout.function("order", event="shop/order")
    def order(ctx: Any) -> dict[str, Any]:
        total = ctx.step.run("price", lambda: 42)
        ctx.step.send_event("notify", [{"name": "shop/notify", "data": {"total": total}}])
        return {"total": total}

    @fanout.function("notify", event="shop/notify")
    def notify(ctx: Any) -> str:
        return ctx.step.run("mail", lambda: "sent")

    @fanout.function("broken", event="shop/broken", retries=0)
    def broken(ctx: Any) -> None:
        ctx.step.run("explode", lambda: 1 / 0)

    @fanout.function("napper", event="shop/nap")
    def napper(ctx: Any) -> None:
        ctx.step.sleep("nap", "1h")

    with worker(app):
        [o] = fanout.send(Event(name="shop/order", data={"customer": "ada"}))
        [b] = fanout.send(Event(name="shop/broken"))
        [n] = fanout.send(Event(name="shop/nap"))
        runs = {"order": fanout.wait_for_run(derived_id("order", o), 20),
                "broken": fanout.wait_for_run(derived_id("broken", b), 20)}
        wait_until(lambda: fanout.get_run(derived_id("napper", n)).status == "sleeping")
        runs["napper"] = fanout.get_run(derived_id("napper", n))
        runs["notify"] = fanout.wait_for_run(
            derived_id("notify", runs["order"].steps[1].output[0]), 20)
        yield runs


def test_the_runs_list_filters_by_function_status_and_text(fanout: Fanout, shop: Any) -> None:
    dash = app(fanout)
    page = get(dash, "/")
    assert page.status_code == 200
    for run in shop.values():
        assert run.id[:12] in page.text
    failed = get(dash, "/?status=failed")
    assert shop["broken"].id[:12] in failed.text and shop["order"].id[:12] not in failed.text
    by_function = get(dash, "/?function=napper")
    assert shop["napper"].id[:12] in by_function.text
    assert shop["order"].id[:12] not in by_function.text
    assert shop["order"].id[:12] in get(dash, "/?q=ada").text  # the event's data
    assert shop["broken"].id[:12] in get(dash, "/?q=ZeroDivision").text  # the error
    assert "no runs match" in get(dash, "/?q=nobody-has-this").text
    bad = get(dash, "/?status=bogus")
    assert bad.status_code == 400 and "unknown status" in bad.text


def test_the_runs_list_filters_by_event_name_parent_and_time_range(fanout: Fanout,
                                                                   shop: Any) -> None:
    dash = app(fanout)
    order, notify = shop["order"], shop["notify"]
    def rows(query: str) -> set[str]:
        return set(re.findall(r'class="run" data-run="(\w+)"', get(dash, query).text))

    assert rows("/?name=shop/notify") == {notify.id}
    assert rows(f"/?parent={order.id[:12]}") == {notify.id}  # a prefix, as printed
    assert rows("/?since=1h") == {run.id for run in shop.values()}
    # "before the last hour": every run of the test is younger.
    assert "no runs match" in get(dash, "/?until=1h").text
    unknown = get(dash, "/?function=nope")
    assert unknown.status_code == 400 and "unknown function &#39;nope&#39;" in unknown.text


def test_a_bulk_action_counts_the_filtered_runs_then_applies_once_confirmed(
        fanout: Fanout, shop: Any) -> None:
    dash = app(fanout)
    napper, broken = shop["napper"].id, shop["broken"].id
    dry = get(dash, "/bulk?action=cancel&status=sleeping")
    assert dry.status_code == 200
    assert re.search(r'id="bulk-count"><b>1</b> active run matches', dry.text)
    assert re.findall(r'class="run" data-run="(\w+)"', dry.text) == [napper]
    assert fanout.get_run(napper).status == "sleeping"  # a dry run changes nothing
    page = "/bulk?action=cancel&status=sleeping"
    assert post_form(dash, page, "/bulk?status=sleeping",
                     {"action": "cancel", "confirm": ""}).status_code == 400
    assert post_form(dash, page, "/bulk?status=sleeping",
                     {"action": "cancel", "confirm": "yes", "csrf": "forged"}).status_code == 403
    done = post_form(dash, page, "/bulk?status=sleeping", {"action": "cancel", "confirm": "yes"})
    assert done.status_code == 303 and "cancelled 1 of 1 runs" in unquote(done.headers["location"])
    assert fanout.get_run(napper).status == "cancelled"
    assert fanout.get_run(shop["order"].id).status == "completed"  # outside the filter
    # Rerun the failed runs of one function: each gets a new run that reruns it.
    dry = get(dash, "/bulk?action=rerun&function=broken&status=failed")
    assert re.search(r'id="bulk-count"><b>1</b> finished run matches', dry.text)
    done = post_form(dash, "/bulk?action=rerun&function=broken&status=failed",
                     "/bulk?function=broken&status=failed", {"action": "rerun", "confirm": "yes"})
    assert done.status_code == 303 and "reran 1 of 1 runs" in unquote(done.headers["location"])
    reruns = [r for r in fanout.list_runs(function="broken").runs if r.rerun_of == broken]
    assert len(reruns) == 1
    assert get(dash, "/bulk?action=delete").status_code == 400


def test_a_run_page_shows_steps_children_waterfall_and_event(fanout: Fanout, shop: Any) -> None:
    dash = app(fanout)
    order = shop["order"]
    page = get(dash, f"/runs/{order.id}")
    assert page.status_code == 200
    assert 'data-step="price"' in page.text and 'data-step="notify"' in page.text
    assert shop["notify"].id[:12] in page.text  # the child, on the waterfall
    assert page.text.count('class="wf-row"') == 1 + 2 + 1  # queue, two steps, one child
    assert "&#34;customer&#34;: &#34;ada&#34;" in page.text  # the trigger event, escaped
    # A prefix of the id (as the CLI prints them) finds the run too.
    assert order.id in get(dash, f"/runs/{order.id[:12]}").text
    sleeping = get(dash, f"/runs/{shop['napper'].id}")
    assert "wake at" in sleeping.text and "UTC" in sleeping.text  # a human time
    assert get(dash, "/runs/" + "0" * 32).status_code == 404


def test_a_run_page_shows_the_error_of_each_earlier_attempt_of_a_step(
        app: Any, fanout: Fanout, worker: Any) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"upstream 503 (call {len(calls)})")
        return "ok"

    @fanout.function("flaky-page", retries=RetryPolicy(max_retries=3, backoff=0.05, jitter=0))
    def flaky_page(ctx: Any) -> str:
        return ctx.step.run("call", flaky)

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(flaky_page), 20)
    page = get(app_of(fanout), f"/runs/{run.id}").text
    assert "2 earlier failed attempts" in page
    shown = re.findall(r'data-attempt="(\d+)"><b>attempt \d+</b> <span class="muted">[^<]*'
                       r'UTC</span> ConnectionError: upstream 503 \(call (\d+)\)', page)
    assert shown == [("1", "1"), ("2", "2")]


def test_events_and_functions_pages(fanout: Fanout, shop: Any) -> None:
    dash = app(fanout)
    events = get(dash, "/events")
    assert shop["order"].event_ids[0][:12] in events.text
    functions = get(dash, "/functions")
    for fid in ("order", "notify", "broken", "napper"):
        assert f'data-function="{fid}"' in functions.text
    assert "failed 1" in functions.text


def test_actions_need_the_csrf_token_and_a_confirmation(fanout: Fanout, shop: Any) -> None:
    dash = app(fanout)
    napper = shop["napper"].id
    page = f"/runs/{napper}"
    forged = post_form(dash, page, f"/runs/{napper}/cancel", {"csrf": "forged", "confirm": "yes"})
    assert forged.status_code == 403
    unconfirmed = post_form(dash, page, f"/runs/{napper}/cancel", {"confirm": ""})
    assert unconfirmed.status_code == 400
    assert fanout.get_run(napper).status == "sleeping"
    done = post_form(dash, page, f"/runs/{napper}/cancel", {"confirm": "yes"})
    assert done.status_code == 303
    assert fanout.get_run(napper).status == "cancelled"
    # A rerun of a finished run starts a new run; of an active one, it is refused.
    rerun = post_form(dash, f"/runs/{shop['order'].id}", f"/runs/{shop['order'].id}/rerun",
                      {"confirm": "yes", "from_step": "notify"})
    assert rerun.status_code == 303
    fresh = rerun.headers["location"].split("/runs/")[1].split("?")[0]
    assert fanout.get_run(fresh).rerun_of == shop["order"].id


def test_credentials_and_read_only(fanout: Fanout, shop: Any) -> None:
    guarded = app(fanout, DashboardConfig(basic_auth="ops:s3cret"))
    assert get(guarded, "/").status_code == 401
    assert get(guarded, "/", auth=("ops", "wrong")).status_code == 401
    assert get(guarded, "/", auth=("ops", "s3cret")).status_code == 200
    napper = shop["napper"].id
    refused = post_form(guarded, f"/runs/{napper}", f"/runs/{napper}/cancel",
                        {"confirm": "yes"})
    assert refused.status_code == 401 and fanout.get_run(napper).status == "sleeping"
    tokened = app(fanout, DashboardConfig(token="t0ken"))
    assert get(tokened, "/metrics").status_code == 401
    assert get(tokened, "/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    read_only = app(fanout, DashboardConfig(read_only=True))
    assert 'id="cancel"' not in get(read_only, f"/runs/{napper}").text
    assert post_form(read_only, f"/runs/{napper}", f"/runs/{napper}/cancel",
                     {"confirm": "yes"}).status_code == 403
    assert fanout.get_run(napper).status == "sleeping"


def test_metrics_parse_and_count_the_runs(fanout: Fanout, shop: Any) -> None:
    text = get(app(fanout), "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    recent = {(s.labels["function"], s.labels["status"]): s.value
              for s in families["fanout_recent_runs"].samples}
    assert recent[("order", "completed")] == 1 and recent[("broken", "failed")] == 1
    assert recent[("napper", "sleeping")] == 1
    index = {s.labels["index"]: s.value for s in families["fanout_index_entries"].samples}
    assert index["timers"] >= 1  # the sleeping run
    assert families["fanout_pump_lag_seconds"].samples[0].value == 0


def test_worker_counters_count_runs_steps_and_parks(app: Any, fanout: Fanout,
                                                   worker: Any) -> None:
    from fanout_celery import RetryPolicy, metrics

    registry = CollectorRegistry()
    metrics.install(registry)

    @fanout.function("counted", event="app/counted",
                     retries=RetryPolicy(max_retries=1, backoff=0.01, jitter=0))
    def counted(ctx: Any) -> None:
        ctx.step.run("flaky", lambda: ctx.attempt or 1 / 0)

    with worker(app):
        ids = fanout.send([Event(name="app/counted") for _ in range(3)])
        for eid in ids:
            assert fanout.wait_for_run(derived_id("counted", eid), 20).status == "completed"

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("fanout_runs_total", function="counted", status="completed") == 3
    assert value("fanout_step_retries_total", function="counted") == 3
    assert value("fanout_runs_parked_total", function="counted", status="retrying") == 3
    assert value("fanout_runs_started_total", function="counted") == 6
    assert value("fanout_attempt_duration_seconds_count", function="counted") == 6


def test_the_dashboard_mounts_under_a_path_of_a_web_app(fanout: Fanout, shop: Any) -> None:
    from fastapi import FastAPI

    web = FastAPI()
    web.mount("/ops/fanout", app(fanout))
    page = get(web, "/ops/fanout/")
    assert page.status_code == 200
    order = shop["order"].id
    assert f'href="/ops/fanout/runs/{order}"' in page.text  # links keep the prefix
    assert order in get(web, f"/ops/fanout/runs/{order}").text
    done = post_form(web, f"/ops/fanout/runs/{shop['napper'].id}",
                     f"/ops/fanout/runs/{shop['napper'].id}/cancel", {"confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"].startswith("/ops/fanout/")
