"""The whole device loop from the command line, with a real `serve-updates` process:
export → keygen → publish → serve → fetch → infer → publish newer → fetch delta → infer →
rollback → infer. The runtime must follow `state.json` at each step."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch

from fedadapt.adapter_files import save_adapter
from fedadapt.adapters import AdapterModel, BottleneckConfig
from fedadapt.base import load_base
from fedadapt.base.checkpoint import load_tokenizer, tokenize
from fedadapt.cli.app import main
from fedadapt.clients.runtime import EdgeRuntime

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TEXTS = ["a gem of a film", "two hours I will never get back"]


def _free_port() -> int:
    """A port nothing listens on now (the CLI takes 1..65535, not 0 for "any")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(registry):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedadapt",
            "serve-updates",
            "--registry",
            str(registry),
            "--port",
            str(_free_port()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    url = re.search(r"at (http://\S+)", line).group(1)
    for _ in range(50):
        try:
            httpx.get(url + "/index.json", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, url


def _infer(device, capsys) -> tuple[list[str], int]:
    assert main(["infer", "--device-dir", str(device), *TEXTS]) == 0
    out = capsys.readouterr()
    version = int(re.search(r"adapter version (\d+)", out.err).group(1))
    return out.out.strip().splitlines(), version


def test_update_loop_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    model = AdapterModel(load_base("none"))
    model.add_adapter("g", BottleneckConfig(reduction_factor=32), num_labels=2)
    params = model.adapter_parameters("g")
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(model, "g", tmp_path / "v1", version=1, extra={"label_names": ["rotten", "fresh"]})
    model.set_active("g")
    ids, mask = tokenize(load_tokenizer(128), TEXTS)
    with torch.no_grad():
        want1 = model(ids, mask).numpy()
        params["head.bias"].add_(torch.tensor([2.0, -2.0]))  # v2: a clear change of mind
        want2 = model(ids, mask).numpy()
    save_adapter(model, "g", tmp_path / "v2", version=2, extra={"label_names": ["rotten", "fresh"]})

    device = tmp_path / "device"
    args = ["export", "--adapter", str(tmp_path / "v1"), "--out", str(device), "--no-measure"]
    assert main(args) == 0
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    key, pub = tmp_path / "keys" / "signing_key.pem", tmp_path / "keys" / "signing_key.pub.pem"
    registry = tmp_path / "registry"
    assert (
        main(
            [
                "publish",
                "--adapter",
                str(tmp_path / "v1"),
                "--registry",
                str(registry),
                "--key",
                str(key),
            ]
        )
        == 0
    )
    proc, url = _serve(registry)
    try:
        fetch = ["fetch", "--url", url, "--device-dir", str(device), "--trust", str(pub)]
        assert main(fetch) == 0 and "version 1 (full" in capsys.readouterr().out
        lines, version = _infer(device, capsys)
        assert version == 1 and len(lines) == 2
        assert np.abs(EdgeRuntime(device).logits(TEXTS) - want1).max() < 0.25

        assert (
            main(
                [
                    "publish",
                    "--adapter",
                    str(tmp_path / "v2"),
                    "--registry",
                    str(registry),
                    "--key",
                    str(key),
                ]
            )
            == 0
        )
        assert main(fetch) == 0 and "version 2 (delta" in capsys.readouterr().out
        lines2, version = _infer(device, capsys)
        assert version == 2 and all(line.startswith("rotten") for line in lines2)
        assert np.abs(EdgeRuntime(device).logits(TEXTS) - want2).max() < 0.25

        assert main(["rollback", "--device-dir", str(device)]) == 0
        assert "rolled back to version 1" in capsys.readouterr().out
        lines1, version = _infer(device, capsys)
        assert version == 1 and lines1 == lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)
