import pytest

from fedadapt.bench.aggregate import measure


@pytest.mark.parametrize("path", ["fedadapt", "flower_fedavg"])
def test_aggregate_case_reports_time_and_memory(path):
    r = measure(10, path)
    assert r["ms"] > 0 and r["peak_mb"] >= 0
