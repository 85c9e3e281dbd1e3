"""One bench case in a process of its own: peak RSS and allocator state stay the case's."""

from __future__ import annotations

import json
import subprocess
import sys


def run_case(module: str, *args: object) -> dict:
    """Run one bench case as `python -m module args...` in its own process; its last stdout
    line is the JSON result. A process per case keeps peak RSS and allocator state its own."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"bench case {module} {args} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
