"""The code the README and the getting-started page show runs as written.

Each ``python`` block of those pages names the file it belongs to on its first line
(``# proj.py``, ``# proj.py, continued``, ``# send.py``). The test writes the files out,
pointing the project at the test's Redis instead of ``redis://localhost:6379/0``, starts
a real worker (``celery -A proj worker``) in that folder, runs each other file as a user
would, and starts the cron functions the module declares.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/getting-started.md"]
DOC_BROKER = "redis://localhost:6379/0"
FILE_LINE = re.compile(r"^# (\w+\.py)(, continued)?$")


def code_files(page: str) -> dict[str, str]:
    """The page's python blocks, joined by the file their first line names."""
    text = (ROOT / page).read_text()
    files: dict[str, str] = {}
    for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
        first = block.splitlines()[0]
        match = FILE_LINE.match(first)
        assert match, f"{page}: a python block must name its file on its first line: {first!r}"
        name, continued = match.groups()
        assert bool(continued) == (name in files), f"{page}: {first!r} out of order"
        files[name] = files.get(name, "") + block + "\n"
    return files


def run_python(folder: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_code_runs_as_written_against_a_real_worker(page, redis_url, tmp_path):
    files = code_files(page)
    assert set(files) == {"proj.py", "send.py"}
    assert DOC_BROKER in files["proj.py"]
    for name, source in files.items():
        (tmp_path / name).write_text(source.replace(DOC_BROKER, redis_url))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("FANOUT_TEST_STATE_URL", None)
    # Importing the project sends nothing and starts nothing.
    assert run_python(tmp_path, env, "-c", "import proj") == ""

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool=threads",
         "--concurrency=4", "-l", "warning", "--without-mingle", "--without-gossip"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = run_python(tmp_path, env, "send.py")
        assert output.strip().splitlines()[-1] == "grace@example.com"

        crons = [name for name in ("load_cron", "load_stream")
                 if f"def {name}(" in files["proj.py"]]
        script = (
            "import json, time, proj\n"
            "out = {}\n"
            f"for name in {crons!r}:\n"
            "    run_id = proj.fanout.invoke(getattr(proj, name))\n"
            "    run = proj.fanout.wait_for_run(run_id, timeout=60)\n"
            "    deadline = time.monotonic() + 60\n"
            "    while True:\n"
            "        kids = [r for r in proj.fanout.list_runs("
            "function='weekly-activity-send-email').runs if r.parent_run_id == run_id]\n"
            "        if len(kids) >= 2 or time.monotonic() > deadline:\n"
            "            break\n"
            "        time.sleep(0.05)\n"
            "    done = [proj.fanout.wait_for_run(k.id, timeout=60) for k in kids]\n"
            "    out[name] = [run.status, run.output, sorted(d.output for d in done)]\n"
            "print(json.dumps(out))\n")
        result = json.loads(run_python(tmp_path, env, "-c", script).strip().splitlines()[-1])
        emails = ["ada@example.com", "alan@example.com"]
        assert result == {name: ["completed", {"count": 2}, emails] for name in crons}
        assert worker.poll() is None
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        log.close()
    printed = (tmp_path / "worker.log").read_text()
    assert "to grace@example.com: 21 logins this week" in printed
