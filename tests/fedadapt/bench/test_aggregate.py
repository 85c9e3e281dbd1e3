import subprocess
import sys

import pytest

from fedadapt.bench.aggregate import PATHS, measure


@pytest.mark.parametrize("path", PATHS)
def test_aggregate_case_reports_time_and_memory(path):
    r = measure(10, path)  # it also asserts that every one of its replies was accepted
    assert set(r) == ({"ms", "peak_mb", "floor_ms"} if path == "fedadapt" else {"ms", "peak_mb"})
    assert 0 < r["ms"] < 60_000 and r["peak_mb"] < 64  # 10 replies of a 0.23 MB adapter
    if path == "fedadapt":  # the floor is the bare add of the same bytes: below the real thing
        assert 0 < r["floor_ms"] < r["ms"]


_PROBE = """
import numpy as np
from fedadapt.bench.aggregate import peak_rise

def allocate():
    a = np.empty(64 * 2**20, dtype=np.uint8)
    a.fill(1)  # touch every page: only resident memory counts
    return a

held, _, grew = peak_rise(allocate)
_, _, again = peak_rise(lambda: int(held[::4096].sum()))
print(grew, again)
"""


def test_the_peak_is_what_the_aggregation_adds_not_what_came_before():
    """The probe the figures rest on: a 64 MB buffer written during `fn` shows as ~64 MB;
    the same buffer made before the reset, and held, does not count again.

    It runs in a fresh interpreter, as `bench aggregate` runs each case: inside the test
    session, threads that earlier tests left running move the process's own peak.
    """
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    grew, again = map(float, out.split())
    assert 60 <= grew < 100
    assert again < 16
