"""Install the built wheel as a user would, into fresh venvs with nothing else (no test
extras, which pull in packages a user may not have), beside Celery 5.4, beside Celery 5.5
and on the floors of every range, and run the example project end to end in each.

Run by the package env: ``fresh_venvs.py DIST_DIR WORK_DIR``. The example needs a
``redis-server`` on PATH (or ``FANOUT_REDIS_SERVER``), as ``tox -e demo`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPS = {
    # kombu 5.7 refuses the redis-py below 6 that Celery 5.4 pins (docs/development.md)
    "celery 5.4": ["celery[redis]==5.4.*", "kombu<5.6"],
    "celery 5.5": ["celery[redis]==5.5.*"],
    "the floors": ["-c", str(ROOT / ".ci" / "constraints" / "oldest.txt")],
}
SHOWN = ("fanout_celery", "celery", "kombu", "redis", "click", "croniter", "pydantic",
         "rich", "packaging")


def run(cmd: list[str], **kwargs: object) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return str(done.stdout)


def main(dist: str, work: str) -> int:
    [wheel] = Path(dist).glob("*.whl")
    uv = [sys.executable, "-m", "uv"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for name, spec in SETUPS.items():
        started = time.monotonic()
        venv = Path(work) / name.replace(" ", "-")
        run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env)
        python = str(venv / "bin" / "python")
        run([*uv, "pip", "install", "--quiet", "--python", python, *spec, str(wheel)], env=env)
        shown = run([python, "-c", "from importlib.metadata import version as v\n"
                     f"print(', '.join(n + ' ' + v(n) for n in {SHOWN!r}))"], env=env)
        # From the repository root: the example project is importable, the package
        # comes from the venv (the sources are under src/).
        out = run([python, "-m", "example_project"], cwd=ROOT, env=env)
        last = out.strip().splitlines()[-1]
        print(f"{name}: {shown.strip()}\n  {last} ({time.monotonic() - started:.0f} s)")
        if not last.startswith("OK"):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
