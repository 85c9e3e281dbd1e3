"""`start-supernode.sh` hands the device and data folders to the SuperNode's node config.

The script's last step is `exec flower-supernode ...`; a stand-in of that name on PATH
records the arguments, and Flower's own parser reads the node config from them, so the
shell quoting is checked against what the real SuperNode would see.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

SCRIPT = Path(__file__).resolve().parents[2] / "clients" / "start-supernode.sh"


def _node_config(tmp_path: Path, *extra: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "flower-supernode"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "args"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_OUT": str(out)}
    device = tmp_path / "my device"
    cmd = ["bash", str(SCRIPT), "h:1", "ca.crt", "node-1", "2", "3", str(device), "9100", *extra]
    subprocess.run(cmd, env=env, check=True, timeout=30)
    args = out.read_text().splitlines()
    return parse_config_args([args[args.index("--node-config") + 1]])


@pytest.mark.parametrize("data", ["data", "/srv/my data"])
def test_the_data_folder_reaches_the_node_config(tmp_path, data):
    conf = _node_config(tmp_path, data)
    assert conf == {
        "partition-id": 2,
        "num-partitions": 3,
        "device-dir": str(tmp_path / "my device"),
        "data-dir": data,
    }


def test_without_a_data_folder_the_node_keeps_the_demo_partition(tmp_path):
    assert "data-dir" not in _node_config(tmp_path)
