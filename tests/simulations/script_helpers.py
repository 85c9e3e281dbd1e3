"""The table scripts in simulations/ are scripts, not a package: load and run them by path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SIMULATIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: object) -> subprocess.CompletedProcess:
    """The script as a user runs it: its own process, exit code and stderr."""
    return subprocess.run(
        [sys.executable, str(SIMULATIONS / f"{name}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def comparison(mean: float, lo: float, hi: float, clients: int = 50) -> dict:
    """A report's paired comparison entry (server/report.py's bootstrap_diff shape)."""
    return {"mean_diff": mean, "ci95_low": lo, "ci95_high": hi, "clients": clients}
