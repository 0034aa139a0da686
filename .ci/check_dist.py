"""Check what the built sdist and wheel carry: every file the package reads at run time
(its Lua scripts, the dashboard's templates, py.typed), the licence, and metadata that
agrees with ``fanout_celery.__version__``. Run by the package env: ``check_dist.py DIR``."""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "fanout_celery"


def expected_package_files() -> set[str]:
    """The package's files as the source tree holds them, relative to ``src/``."""
    kept = {".py", ".lua", ".html", ".typed"}
    return {str(p.relative_to(ROOT / "src")) for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix in kept and "__pycache__" not in p.parts}


def source_version() -> str:
    text = (PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("no __version__ in src/fanout_celery/__init__.py")
    return match.group(1)


def check_wheel(path: Path, version: str, expected: set[str]) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        info = f"fanout_celery-{version}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    carried = {n for n in names if n.startswith("fanout_celery/")}
    for missing in sorted(expected - carried):
        problems.append(f"{path.name}: missing {missing}")
    for extra in sorted(n for n in carried - expected if not n.endswith("/")):
        problems.append(f"{path.name}: carries {extra}, which the source tree does not")
    if f"{info}/licenses/LICENSE" not in names:
        problems.append(f"{path.name}: no LICENSE in {info}/licenses")
    if metadata.get("Version") != version:
        problems.append(f"{path.name}: Version {metadata.get('Version')} != {version}")
    if metadata.get("License-Expression") != "BSD-3-Clause":
        problems.append(f"{path.name}: License-Expression is {metadata.get('License-Expression')}")
    classifiers = metadata.get_all("Classifier") or []
    for wanted in ("Framework :: Celery", "Programming Language :: Python :: 3.11",
                   "Programming Language :: Python :: 3.12",
                   "Programming Language :: Python :: 3.13"):
        if wanted not in classifiers:
            problems.append(f"{path.name}: no classifier {wanted!r}")
    return problems


def check_sdist(path: Path, version: str, expected: set[str]) -> list[str]:
    problems = []
    top = f"fanout_celery-{version}"
    with tarfile.open(path) as sdist:
        names = {n.removeprefix(top + "/") for n in sdist.getnames()}
    for wanted in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml",
                   *(f"src/{name}" for name in expected)):
        if wanted not in names:
            problems.append(f"{path.name}: missing {wanted}")
    return problems


def main(folder: str) -> int:
    dist = Path(folder)
    version = source_version()
    expected = expected_package_files()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    problems = check_wheel(wheels[0], version, expected) + \
        check_sdist(sdists[0], version, expected)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{wheels[0].name} and {sdists[0].name}: {len(expected)} package files, "
              f"the licence and version {version} in each")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
