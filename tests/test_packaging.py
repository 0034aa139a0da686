"""The metadata says what is tested: its floors are the oldest env's pins, its version is
the package's, the changelog and the classifiers follow."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

from packaging.version import Version

import fanout_celery

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _floors() -> dict[str, Version]:
    floors = {}
    for requirement in PROJECT["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9.]+)", requirement)
        assert match, f"{requirement!r} has no floor: every range is tested from its floor"
        name, floor = match.groups()
        floors[name.lower()] = Version(floor)
    return floors


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, pinned = line.partition("==")
            pins[name.strip().lower()] = Version(pinned.strip())
    return pins


def test_the_oldest_envs_pins_are_the_floors_of_the_metadatas_ranges() -> None:
    assert _pins(ROOT / ".ci" / "constraints" / "oldest.txt") == _floors()


def test_each_supported_celery_minor_has_an_env_and_the_range_admits_each() -> None:
    constraints = sorted(p.name for p in (ROOT / ".ci" / "constraints").glob("celery*.txt"))
    assert constraints == ["celery53.txt", "celery54.txt", "celery55.txt", "celery56.txt"]
    tox = (ROOT / "tox.ini").read_text()
    for name in constraints:
        assert f".ci/constraints/{name}" in tox
    celery = next(r for r in PROJECT["dependencies"] if r.startswith("celery"))
    assert ">=5.3" in celery and "<6" in celery


def test_the_installed_distribution_is_this_version_of_the_package() -> None:
    assert version("fanout_celery") == fanout_celery.__version__
    assert metadata("fanout_celery")["License-Expression"] == "BSD-3-Clause"


def test_the_changelog_has_a_section_for_this_version_and_the_one_before() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(fanout_celery.__version__)}\]", changelog, re.M)
    assert re.search(r"^## \[0\.1\.0\]", changelog, re.M)


def test_the_classifiers_name_the_pythons_the_envs_run() -> None:
    tested = {c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"]
              if re.match(r"Programming Language :: Python :: 3\.\d+$", c)}
    assert tested == {"3.11", "3.12", "3.13"}
    tox = (ROOT / "tox.ini").read_text()
    assert "base_python = python3.12" in tox and "base_python = python3.13" in tox
    assert "Framework :: Celery" in PROJECT["classifiers"]
