"""The dashboard in a real headless Chromium (Selenium), served by uvicorn, against a
real Redis and a real worker: the runs list and its filters, a run's steps, waterfall
and child, a rerun and a cancel confirmed in the browser's dialog, checked in the store.
``FANOUT_UPDATE_SCREENSHOTS=1`` saves the screenshots it takes into ``docs/images``."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from fanout_celery import Event, Fanout
from fanout_celery.dashboard import app
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


@pytest.fixture
def served(fanout: Fanout) -> Iterator[str]:
    """The dashboard of ``fanout`` on a free local port, served by uvicorn in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app(fanout), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def screenshot(browser: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a page, not a blank
    if os.environ.get("FANOUT_UPDATE_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / name)


def test_runs_are_seen_and_operated_in_a_browser(app: Any, fanout: Fanout, worker: Any,
                                                browser: Any, served: str,
                                                tmp_path: Path) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    @fanout.function("load-users", event="app/weekly")
    def load_users(ctx: Any) -> dict[str, int]:
        users = ctx.step.run("fetch-users", lambda: [{"id": i} for i in range(3)])
        ctx.step.send_event("send-events", [{"name": "app/email", "data": {"user": u}}
                                            for u in users])
        return {"count": len(users)}

    @fanout.function("send-email", event="app/email")
    def send_email(ctx: Any) -> str:
        data = ctx.step.run("load-user-data", lambda: {"id": ctx.event.data["user"]["id"]})
        ctx.step.sleep("wait-a-bit", 0.05)
        return ctx.step.run("email-user", lambda: f"sent to {data['id']}")

    @fanout.function("napper", event="app/nap")
    def napper(ctx: Any) -> None:
        ctx.step.sleep("nap", "1h")

    def until(condition: Any) -> Any:
        # A form's POST reloads the page: an element read while it loads is gone
        # (stale) or not there yet; the condition is then read again on the new page.
        return WebDriverWait(browser, 15, ignored_exceptions=(
            StaleElementReferenceException, NoSuchElementException)).until(
                lambda _: condition())

    with worker(app):
        [weekly] = fanout.send(Event(name="app/weekly"))
        [nap] = fanout.send(Event(name="app/nap"))
        parent = fanout.wait_for_run(derived_id("load-users", weekly), 20)
        children = [fanout.wait_for_run(derived_id("send-email", e), 20)
                    for e in parent.steps[1].output]
        nap_id = derived_id("napper", nap)
        wait_until(lambda: fanout.get_run(nap_id).status == "sleeping")

        # The runs list, then filtered to one function.
        browser.get(served + "/")
        rows = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#runs tr.run"))
        assert {r.get_attribute("data-run") for r in rows} >= {parent.id, nap_id,
                                                                *(c.id for c in children)}
        screenshot(browser, tmp_path, "dashboard-runs.png")
        Select(browser.find_element(By.NAME, "function")).select_by_visible_text("send-email")
        browser.find_element(By.ID, "apply").click()
        until(lambda: "function=send-email" in browser.current_url)
        shown = {r.get_attribute("data-run")
                 for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")}
        assert shown == {c.id for c in children}

        # One run: its steps, its waterfall with the child runs, its trigger event.
        browser.get(served + "/")
        browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{parent.id}"] a').click()
        until(lambda: browser.find_element(By.ID, "run-id").text == parent.id)
        steps = [r.get_attribute("data-step")
                 for r in browser.find_elements(By.CSS_SELECTOR, "#steps tr.step")]
        assert steps == ["fetch-users", "send-events"]
        waterfall = browser.find_element(By.ID, "waterfall").text
        assert all(c.id[:12] in waterfall for c in children)
        screenshot(browser, tmp_path, "dashboard-run.png")
        child_page = children[0].id
        browser.find_element(By.LINK_TEXT, f"send-email {child_page[:12]}").click()
        until(lambda: browser.find_element(By.ID, "run-id").text == child_page)
        bars = browser.find_elements(By.CSS_SELECTOR, "#waterfall .wf-bar.wait")
        assert len(bars) == 1  # the sleep, drawn as waiting

        # Rerun the child from its last step, confirmed in the browser's dialog.
        Select(browser.find_element(By.ID, "from-step")).select_by_visible_text("email-user")
        browser.find_element(By.ID, "rerun").click()
        WebDriverWait(browser, 5).until(lambda b: b.switch_to.alert).accept()
        until(lambda: "rerun" in browser.find_element(By.ID, "note").text)
        fresh_id = browser.find_element(By.ID, "run-id").text
        fresh = fanout.wait_for_run(fresh_id, 20)
        assert fresh.rerun_of == child_page and fresh.status == "completed"

        # Cancel the sleeping run; dismissing the dialog first does nothing.
        browser.get(f"{served}/runs/{nap_id}")
        browser.find_element(By.ID, "cancel").click()
        WebDriverWait(browser, 5).until(lambda b: b.switch_to.alert).dismiss()
        assert fanout.get_run(nap_id).status == "sleeping"
        browser.find_element(By.ID, "cancel").click()
        WebDriverWait(browser, 5).until(lambda b: b.switch_to.alert).accept()
        until(lambda: browser.find_element(By.ID, "run-status").text == "cancelled")
        assert fanout.get_run(nap_id).status == "cancelled"
