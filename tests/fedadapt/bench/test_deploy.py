"""Bench `deploy --quick`: the per-message breakdown, with the base cached as on a device."""

from __future__ import annotations

import os

import pytest

from fedadapt.base_cache import BASE_CACHE_ENV
from fedadapt.bench.deploy import per_message


@pytest.mark.slow
def test_per_message_breakdown_uses_the_cache_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv(BASE_CACHE_ENV, raising=False)
    out = per_message(runs=1)
    s = out["per_message_s"]
    assert set(s) == {"imports", "base", "total"}
    assert s["total"] == pytest.approx(s["imports"] + s["base"], abs=0.002)
    # the cached base skips quantizing: cheaper than building it from the checkpoint
    assert s["base"] < out["per_message_uncached_base_s"]
    assert BASE_CACHE_ENV not in os.environ
