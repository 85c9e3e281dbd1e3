"""`fedadapt simulate`: one run on Flower's Simulation Engine, through `flwr run`.

It starts a private simulation SuperLink on free loopback ports with a run-local `FLWR_HOME`
(so parallel runs never collide and `~/.flwr` is untouched), submits this project's apps
with the run config, streams their output, and stops the SuperLink by PID however the run
ends. Runtime dependency installation, telemetry and update checks are off: runs are offline.
The SuperLink runs under a supervisor (`fedadapt.supervise`) that takes it and everything
below it (SuperExec, `flwr-simulation`, Ray) down when this process dies, even by SIGKILL;
the run folder is locked (`fedadapt.runlock`) while any of them lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w

from fedadapt import ray_nodes, runlock, supervise
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def project_dir() -> Path:
    """The source checkout holding `[tool.flwr.app]`: `flwr run` builds the app from it."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FedAdaptError(f"no Flower app project at {root}; run from a fedadapt checkout")
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago; another process may take it before
    the caller binds it, so a start on it can still fail.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(
    url: str, proc: subprocess.Popen, log: Path, timeout: float = 90, verify: str | bool = True
) -> None:
    """Wait for a SuperLink's `/health` (`verify`: the CA file of a TLS SuperLink)."""
    import ssl

    import httpx

    if isinstance(verify, str):
        verify = ssl.create_default_context(cafile=verify)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedAdaptError(f"the SuperLink exited with code {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=1, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise FedAdaptError(f"the SuperLink did not come up within {timeout:.0f}s; see {log}")


def end_processes(procs: list, grace: float = 15) -> None:
    """End these `psutil.Process`es by PID: TERM, `grace` seconds, then KILL those left."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def run(cfg: SimConfig) -> Path:
    """Run `cfg` to completion; returns the run folder (with report.json). The folder is
    locked for the run's life: a second run or a `--resume` into it is refused."""
    out = Path(cfg.out).resolve()
    from fedadapt.server.full_model_reuse import resolved

    cfg = resolved(cfg)  # a full-model baseline to reuse: checked before anything starts
    if cfg.ray_address:  # refused before the run folder is touched
        ray_nodes.check_address(cfg.ray_address)
    if cfg.publish_every:  # a key that cannot sign would fail only after rounds have trained
        from fedadapt.updates.keys import load_private

        load_private(cfg.publish_key)
    with runlock.hold(out) as lock:
        return _run_locked(cfg, out, lock)


def _run_locked(cfg: SimConfig, out: Path, lock: int) -> Path:
    home = out / ".flwr"
    home.mkdir(exist_ok=True)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    # The SuperLink starts `flower-superexec` (and Ray its workers) by name: this venv's
    # bin must be on PATH even when the venv was never activated (as under `make`).
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home), "PATH": path}
    # An existing Ray cluster, or (with "") a private Ray even if the shell names one
    env.pop("RAY_ADDRESS", None)
    if cfg.ray_address:
        env["RAY_ADDRESS"] = cfg.ray_address  # ray.init's own default (fedadapt.ray_nodes)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedadapt"\n\n[superlink.fedadapt]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    run_config = out / "run_config.toml"
    run_config.write_text(tomli_w.dumps({**cfg.to_dict(), "out": str(out)}))
    log = out / "superlink.log"
    with open(log, "ab") as log_f:
        superlink = supervise.popen(
            [
                str(bin_dir / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(home / "state.db"),
            ],
            env=env,
            stdout=log_f,
            hold_fds=[lock],
        )
    with sigterm_interrupts():
        try:
            wait_healthy(f"http://127.0.0.1:{port}", superlink, log)
            federation = (
                f"num-supernodes={cfg.num_clients} "
                "client-resources-num-cpus=1 init-args-logging-level='ERROR'"
            )
            cmd = [
                str(bin_dir / "flwr"),
                "run",
                str(project_dir()),
                "fedadapt",
                "--federation-config",
                federation,
                "--run-config",
                str(run_config),
                "--stream",
            ]
            done = subprocess.run(cmd, env=env, check=False)
            if done.returncode != 0 or not (out / "report.json").exists():
                raise FedAdaptError(
                    f"the run failed (flwr run exited {done.returncode}); "
                    f"logs above and in {log}. Resume with --resume {out}"
                )
        finally:
            supervise.stop(superlink)
    return out


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an exception for the block, so `kill PID` still stops the SuperLink,
    Ray and the ClientApp workers (they run in their own session and would outlive us)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_config(folder: Path, **overrides: Any) -> SimConfig:
    """The config of the run in `folder`, set to resume, with `overrides` (those not None)
    applied where that is safe (`rounds` may extend it, `baselines=False` finishes it without
    the costly baselines) and refused where they would change what the checkpoint means."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedAdaptError(f"{folder} holds no run to resume (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedAdaptError(f"cannot read {path}: {e}") from e
    saved = SimConfig.from_dict(raw)
    asked = {k: v for k, v in overrides.items() if v is not None}
    return saved.resumed({**asked, "out": str(folder.resolve())})
