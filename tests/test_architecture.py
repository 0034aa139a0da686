"""The shape of the package, as ARCHITECTURE.md and the API reference describe it.

The layer and import-cycle contracts themselves run in the lint env (``lint-imports``);
these tests hold what those contracts cannot see.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fanout_celery import Fanout

# The source in the repository (src/ layout), whichever copy of the package the tests import
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "fanout_celery"
MAX_LINES = 400


def test_fanouts_public_methods_are_the_ones_the_reference_lists() -> None:
    reference = (ROOT / "docs" / "reference" / "api.md").read_text()
    table = reference.split("## Fanout", 1)[1].split("::: ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)\(", table, re.M))
    documented |= {m for row in re.findall(r"^\| (`.*?) \|", table, re.M)
                   for m in re.findall(r"`(\w+)\(", row)}
    public = {name for name, member in inspect.getmembers(Fanout)
              if not name.startswith("_") and inspect.isfunction(member)}
    assert public == documented


def test_no_module_is_longer_than_a_reader_takes_in_at_one_sitting() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_lua_lives_in_the_redis_stores_script_files_only() -> None:
    inline = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
              if "redis.call(" in p.read_text()]
    assert inline == []
    scripts = sorted(p.name for p in (PACKAGE / "store" / "redis" / "scripts").glob("*.lua"))
    for name in scripts:
        text = (PACKAGE / "store" / "redis" / "scripts" / name).read_text()
        if name in ("prelude.lua", "wake.lua", "waiter.lua"):
            continue
        header = re.sub(r"^--! include \w+\n", "", text).split("\n", 1)[0]
        assert header.startswith("-- "), f"{name} starts without its header comment"
        assert "KEYS" in text.split("\nlocal", 1)[0] or "KEYS:" in text, name


def test_the_final_statuses_are_written_once_per_language() -> None:
    from fanout_celery.model.records import FINAL

    prelude = (PACKAGE / "store" / "redis" / "scripts" / "prelude.lua").read_text()
    lua_final = set(re.findall(r"(\w+) = true", prelude.split("local FINAL", 1)[1]
                               .split("}", 1)[0]))
    assert lua_final == set(FINAL)
    scripts = [p for p in (PACKAGE / "store" / "redis" / "scripts").glob("*.lua")
               if p.name != "prelude.lua"]
    assert not [p.name for p in scripts if "'completed' or" in p.read_text()]
