"""The step-by-step deployment of docs/how-to/deploy.md, run as written: certificates, the
SuperLink, flwr's connection, registration, two packages, two devices on their own data, one
round, `device status`, `infer` and a signed update, all from the page's own bash
block in a fresh home folder. Only the port numbers are swapped for free ones, so that the
test cannot collide with a service of the machine; everything else is the page's text, so the
test fails when the page and the commands drift apart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedadapt.launch.simulate import free_port, project_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PAGE = project_dir() / "docs" / "how-to" / "deploy.md"
MARK = "<!-- recipe: the block below runs as written in tests/fedadapt/launch/test_recipe.py -->"


def recipe() -> str:
    """The bash block right after the recipe's marker on the page."""
    text = PAGE.read_text()
    assert MARK in text, f"{PAGE} lost its recipe marker"
    block = re.match(r"\s*```bash\n(.*?)\n```", text.split(MARK, 1)[1], re.S)
    assert block is not None, "the recipe marker is not followed by a bash block"
    return block.group(1)


def free_pair() -> int:
    """A base port b with b+1 and b+2 free: the recipe gives device n the port 9100 + n."""
    for _ in range(50):
        base = free_port()
        if base + 2 < 65536 and all(_free(base + n) for n in (1, 2)):
            return base
    raise RuntimeError("no two consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the recipe's whole process group (its background services), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def _said(out: str) -> str:
    """The recipe's own lines, without the run's streamed log lines, for a failure message."""
    return "\n".join(line for line in out.splitlines() if "INFO" not in line)[-3000:]


def _logs(work: Path) -> str:
    tails = []
    for log in sorted([*work.glob("*.log"), *work.glob("device-*/device/*.log")]):
        tails.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(tails)


def test_the_deploy_recipe_runs_as_written(tmp_path) -> None:
    if not (project_dir() / ".venv" / "bin" / "fedadapt").exists():
        pytest.skip("the recipe uses the clone's .venv, which `make setup` builds")
    script = recipe()
    ports = {"9093": free_port(), "8787": free_port(), "9100": free_pair()}
    for old, new in ports.items():
        assert old in script, f"the recipe no longer uses port {old}"
        script = script.replace(old, str(new))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "FEDADAPT_"))}
    env["HOME"] = str(home)
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=project_dir(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    work = home / "fedadapt-deploy"
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, _ = proc.communicate()
        pytest.fail(f"the recipe did not finish in 900 s\n{_said(out)}\n{_logs(work)}")
    finally:
        _stop(proc)
    assert proc.returncode == 0, f"{_said(out)}\n{_logs(work)}"
    # both devices trained the round on their own files, and the server counted them
    report = (work / "run" / "report.json").read_text()
    assert '"clients": 2' in report
    # device status and infer say what the device serves: the trained round, then the update
    assert "the global adapter of training round 1, not a signed version" in out, _said(out)
    assert re.search(r"installed \S+ version 1 ", out), _said(out)
    assert "(signed adapter version 1, " in out, _said(out)
    assert not any(p.is_file() for p in (work / "device-1" / "device").glob("downloads/*.part"))
