"""Bench `deploy --quick`: the per-message breakdown, with the base cached as on a device,
through a real warm worker, and the in-process figure beside it."""

from __future__ import annotations

import os

import pytest

from fedadapt.base.cache import BASE_CACHE_ENV
from fedadapt.bench.deploy import per_message


@pytest.mark.slow
def test_per_message_breakdown_uses_the_worker_and_the_cache_and_restores_the_environment(
    monkeypatch,
):
    monkeypatch.delenv(BASE_CACHE_ENV, raising=False)
    out = per_message(runs=1)
    s, old = out["per_message_s"], out["per_message_in_process_s"]
    assert set(s) == {"imports", "forward", "base", "total"}
    assert s["total"] == pytest.approx(s["imports"] + s["forward"] + s["base"], abs=0.003)
    assert set(old) == {"imports", "base", "total"}
    # the thin app imports no torch: far cheaper than the handlers' imports
    assert s["imports"] < old["imports"] / 5
    # the cached base skips quantizing: cheaper than building it from the checkpoint
    assert s["base"] < out["per_message_uncached_base_s"]
    assert BASE_CACHE_ENV not in os.environ
