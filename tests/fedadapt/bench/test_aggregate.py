import numpy as np
import pytest

from fedadapt.bench.aggregate import PATHS, measure, peak_rise


@pytest.mark.parametrize("path", PATHS)
def test_aggregate_case_reports_time_and_memory(path):
    r = measure(10, path)  # it also asserts that every one of its replies was accepted
    assert set(r) == ({"ms", "peak_mb", "floor_ms"} if path == "fedadapt" else {"ms", "peak_mb"})
    assert 0 < r["ms"] < 60_000 and r["peak_mb"] < 64  # 10 replies of a 0.23 MB adapter
    if path == "fedadapt":  # the floor is the bare add of the same bytes: below the real thing
        assert 0 < r["floor_ms"] < r["ms"]


def test_the_peak_is_what_the_aggregation_adds_not_what_came_before():
    """The probe the figures rest on: a 64 MB buffer written during `fn` shows as ~64 MB;
    the same buffer made before the reset, and held, does not count again."""

    def allocate() -> np.ndarray:
        a = np.empty(64 * 2**20, dtype=np.uint8)
        a.fill(1)  # touch every page: only resident memory counts
        return a

    held, _, grew = peak_rise(allocate)
    assert 60 <= grew < 100
    _, _, again = peak_rise(lambda: int(held[::4096].sum()))
    assert again < 16
