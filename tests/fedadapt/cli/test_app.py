import pytest

from fedadapt.cli.app import build_parser, main

COMMANDS = [
    "simulate",
    "export",
    "infer",
    "keygen",
    "publish",
    "serve-updates",
    "fetch",
    "rollback",
    "bench",
]


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


def test_keygen_publish_fetch_rollback_from_the_command_line(tmp_path, capsys):
    """The CLI wiring of the update loop (the loop itself is tested in tests/clients)."""
    import os
    import stat
    import threading

    from fedadapt.adapter_files import save_adapter
    from fedadapt.adapters import AdapterModel, LoraConfig
    from fedadapt.base import load_base
    from fedadapt.server.updates.service import UpdateServer

    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    priv = tmp_path / "k" / "signing_key.pem"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites a key
    model = AdapterModel(load_base("int8"))
    model.add_adapter("a", LoraConfig(r=2), num_labels=2)
    for v in (1, 2):
        save_adapter(model, "a", tmp_path / f"a{v}")
        assert (
            main(
                [
                    "publish",
                    "--adapter",
                    str(tmp_path / f"a{v}"),
                    "--registry",
                    str(tmp_path / "reg"),
                    "--key",
                    str(priv),
                ]
            )
            == 0
        )
    server = UpdateServer(tmp_path / "reg")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        args = [
            "fetch",
            "--url",
            server.url,
            "--device-dir",
            str(tmp_path / "dev"),
            "--trust",
            str(tmp_path / "k" / "signing_key.pub.pem"),
        ]
        assert main(args) == 0
        assert "version 2" in capsys.readouterr().out
        assert main(args) == 0 and "up to date" in capsys.readouterr().out
        assert main(["rollback", "--device-dir", str(tmp_path / "dev")]) == 2  # nothing before
    finally:
        server.shutdown()
        server.server_close()


def test_makefile_commands_parse():
    """`make demo` once called a subcommand that did not exist; parse every one it runs."""
    import shlex
    from pathlib import Path

    # make joins a line ending in a backslash with the next: so must the parser here
    makefile = (Path(__file__).parents[3] / "Makefile").read_text().replace("\\\n", " ")
    # the commands a target runs, not a line that only prints one (`@echo "... fedadapt ..."`)
    lines = [
        ln.split("$(BIN)/fedadapt", 1)[1]
        for ln in makefile.splitlines()
        if ln.strip().startswith("$(BIN)/fedadapt")
    ]
    assert len(lines) >= 3
    for line in lines:
        args = build_parser().parse_args(shlex.split(line))
        for attr in ("config",):
            if getattr(args, attr, None):
                assert (Path(__file__).parents[3] / getattr(args, attr)).exists()


def test_check_config_names_a_mistyped_key_that_flowers_superlink_would_not(tmp_path, capsys):
    """`flwr run --run-config` with a typo got only "[code: 15] Invalid run configuration."."""
    bad = tmp_path / "run.toml"
    bad.write_text("rounds = 2\nround = 3\n")
    assert main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        "fedadapt: error: config: unknown key 'round' (did you mean 'rounds'?); "
        "see docs/reference/config.md for the keys"
    )
    assert main(["check-config", str(bad), "--set", "rounds=0"]) == 2  # the file's typo first
    bad.write_text("rounds = 2\n")
    assert main(["check-config", str(bad), "--set", "rounds=0"]) == 2
    assert "rounds = 0 is not an integer >= 1" in capsys.readouterr().err
    assert main(["check-config", str(bad)]) == 0
    assert capsys.readouterr().out.strip() == f"{bad}: a valid run config (rounds=2)"
