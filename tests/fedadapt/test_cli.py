import json
import subprocess
import sys

import pytest

from fedadapt.cli import build_parser, main

COMMANDS = ["demo", "bench"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: fedadapt " + cmd in capsys.readouterr().out


def test_parser_knows_the_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.slow
def test_demo_trains_and_writes_a_loadable_adapter(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedadapt",
            "demo",
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
            "--method",
            "lora",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "accuracy before training" in out and "epoch 2/2" in out
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["method"] == "lora" and cfg["num_labels"] == 2
