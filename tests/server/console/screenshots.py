"""`make console-screenshots`: one PNG of each console view, for the README and the how-to.

The same stand-ins as the browser tests, built fresh: the recorded quick.toml run, a run
still being written (its first rounds, through the ServerApp's own writer), and a registry
whose two channels got real signed reports (one rolling out, one halted by its guardrail).

    .venv/bin/python -m tests.server.console.screenshots --out docs/images
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedadapt.server.console.app import ConsoleServer
from tests.registry_helpers import serving
from tests.server.console.helpers import LiveRun, build_fleet, chromium, copy_recorded_run

VIEWS = {"runs": 1500, "devices": 620, "rollouts": 1250}  # view -> window height


def main() -> None:
    """Build the stand-ins, open each view in headless Chromium, save console-VIEW.png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="PNG folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        copy_recorded_run(tmp / "runs" / "quick")
        live = LiveRun(tmp / "runs" / "live")
        for _ in range(4):
            live.round()
        fleet = build_fleet(tmp / "fleet", devices=12)
        browser = chromium(tmp / "profile")
        try:
            with serving(ConsoleServer(tmp / "runs", fleet.registry)) as url:
                for view, height in VIEWS.items():
                    browser.set_window_size(1400, height)
                    browser.get(f"{url}/#{view}")
                    time.sleep(3)  # a poll, and plotly's drawing
                    out = args.out / f"console-{view}.png"
                    browser.save_screenshot(str(out))
                    print(f"wrote {out}")
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
