"""`fedadapt console` on the command line: it refuses, in one line and before it serves,
a bind beyond loopback without the operator token and actions without their key; with a
token in the environment it starts and asks for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fedadapt.cli.app import main
from fedadapt.updates.keys import keygen

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    monkeypatch.delenv("FEDADAPT_CONSOLE_TOKEN", raising=False)


def _one_line(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fedadapt: error: "), err
    assert message in err, err


def test_beyond_loopback_without_a_token_is_refused(capsys, tmp_path):
    argv = ["console", "--runs", str(tmp_path), "--host", "0.0.0.0", "--port", "8790"]
    _one_line(capsys, argv, "binding 0.0.0.0 (beyond loopback) needs an operator token")
    _one_line(capsys, [*argv, "--token-env", "NO_SUCH_VAR"], "NO_SUCH_VAR is not set")


def test_actions_need_their_key_and_the_key_needs_actions(capsys, tmp_path):
    base = ["console", "--runs", str(tmp_path)]
    _one_line(capsys, [*base, "--allow-actions"], "--allow-actions needs --rollout-key")
    keygen(tmp_path / "keys")
    key = str(tmp_path / "keys" / "signing_key.pem")
    _one_line(capsys, [*base, "--rollout-key", key], "only with --allow-actions")
    _one_line(
        capsys,
        [*base, "--allow-actions", "--rollout-key", key],
        "rollout actions need the registry they act on",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_a_token_it_serves_and_asks_for_it(tmp_path):
    port = _free_port()
    env = {**os.environ, "OPS_TOKEN": "a-long-enough-token-123"}
    argv = ["console", "--runs", str(tmp_path), "--port", str(port), "--token-env", "OPS_TOKEN"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedadapt", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"console at http://127.0.0.1:{port}/ (read-only; operator token required" in line
        url = f"http://127.0.0.1:{port}/api/state"
        assert httpx.get(url).status_code == 401
        auth = {"Authorization": "Bearer a-long-enough-token-123"}
        assert httpx.get(url, headers=auth).json()["runs"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
