import pytest

from fedadapt.cli import build_parser, main

COMMANDS = ["simulate", "bench"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: fedadapt " + cmd in capsys.readouterr().out


def test_parser_knows_the_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_simulate_refuses_a_missing_resume_folder(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
