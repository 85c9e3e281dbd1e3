"""Fuzz targets' session report: how many generated inputs ran, per target and in total,
and the CPU seconds each fuzz test took (to size the profiles on a shared machine)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fuzz.support import COUNTS, PROFILE

CPU: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    start = time.process_time()
    yield
    CPU[item.name] = time.process_time() - start


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not COUNTS:
        return
    for name, seconds in sorted(CPU.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"fuzz cpu {seconds:7.2f} s  {name}")
    per = ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
    terminalreporter.write_line(
        f"fuzz ({PROFILE} profile): {sum(COUNTS.values())} generated inputs run ({per}); "
        f"{sum(CPU.values()):.0f} CPU s"
    )
