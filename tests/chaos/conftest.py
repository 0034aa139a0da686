"""The chaos suite: fault injection against real worker subprocesses and a real Redis.

Sizes are for CI (a couple of minutes in all); ``FANOUT_CHAOS_SCALE=10`` runs ten times
as many runs and faults, for the figures in RELIABILITY.md. Each test adds a line to the
"chaos figures" section printed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``chaos_report(line)``: print ``line`` in the session's chaos figures."""
    lines = request.config.stash.setdefault(FIGURES, [])

    def report(line: str) -> None:
        lines.append(f"{request.node.name}: {line}")
        print(line)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("chaos figures")
        for header in terminalreporter.config.hook.pytest_report_header(
                config=terminalreporter.config, start_path=terminalreporter.startpath):
            for line in header if isinstance(header, list) else [header]:
                if line.startswith(("redis", "valkey")):
                    terminalreporter.write_line(f"server: {line}")
        for line in lines:
            terminalreporter.write_line(line)
