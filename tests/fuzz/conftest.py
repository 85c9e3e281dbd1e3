"""Fuzz targets' session report: how many generated inputs ran, per target and in total."""

from __future__ import annotations

from tests.fuzz.support import COUNTS, PROFILE


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not COUNTS:
        return
    per = ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
    terminalreporter.write_line(
        f"fuzz ({PROFILE} profile): {sum(COUNTS.values())} generated inputs run ({per})"
    )
