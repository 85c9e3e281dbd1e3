"""Fixtures shared by the end-to-end simulation tests (each full run costs minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def uninterrupted_ci_run(tmp_path_factory) -> Path:
    """`simulations/ci.toml` for 3 rounds without baselines, never interrupted: the run that
    every resumed run (after a clean stop or a crash) must equal to the bit."""
    from tests.fedadapt.launch.test_simulate import _simulate

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    res = _simulate(
        "--config", "simulations/ci.toml", "--no-baselines", "--rounds", "3", "--out", str(out)
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out
