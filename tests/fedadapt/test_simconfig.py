"""Typed config: every way in checks each key's type and allowed values, in one line."""

import dataclasses
import json
from pathlib import Path

import pytest

from fedadapt.errors import ConfigError
from fedadapt.launch.simulate import resume_config
from fedadapt.simconfig import RESUME_SAFE, RULES, SimConfig


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rounds": "ten"}, "config: rounds = 'ten' is not an integer"),
        ({"rounds": -1}, "config: rounds = -1 is not an integer >= 1"),
        ({"rounds": 0}, "config: rounds = 0 is not an integer >= 1"),
        ({"rounds": 2.5}, "config: rounds = 2.5 is not an integer"),
        ({"quantization": "int3"}, "config: quantization = 'int3' is not one of none, int8, int4"),
        ({"codec": "zstd"}, "config: codec = 'zstd' is not one of fp32, fp16, int8"),
        ({"baselines": "False"}, "config: baselines = 'False' is not a boolean (true or false)"),
        ({"lr": True}, "config: lr = True is not a number"),
        ({"lr": float("nan")}, "config: lr = nan is not a finite number"),
        ({"test_fraction": 1.0}, "config: test_fraction = 1.0 is not a number in (0, 1)"),
        ({"method": "dora"}, "config: method = 'dora' is not one of bottleneck, lora, ia3, bitfit"),
        ({"clients_per_round": 30}, "config: clients_per_round = 30 exceeds num_clients = 20"),
        ({"rounds_typo": 3}, "config: unknown key 'rounds_typo' (did you mean 'rounds'?)"),
        ({"evaluate_sample": -1}, "config: evaluate_sample = -1 is not an integer >= 0"),
        ({"ray_address": 6379}, "config: ray_address = 6379 is not a string"),
    ],
)
def test_bad_values_are_named_in_one_line(raw, message):
    with pytest.raises(ConfigError) as e:
        SimConfig.from_dict(raw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_a_toml_file_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('rounds = "ten"\n')
    with pytest.raises(ConfigError, match="rounds = 'ten' is not an integer"):
        SimConfig.load(path)
    path.write_text("rounds = [\n")
    with pytest.raises(ConfigError, match=f"config file {path} is not valid TOML"):
        SimConfig.load(path)
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'none.toml'} does not exist"):
        SimConfig.load(tmp_path / "none.toml")


def test_flower_run_config_is_checked_and_ints_become_floats():
    assert SimConfig.from_run_config({"lr": 1, "rounds": 3}).lr == 1.0
    assert isinstance(SimConfig(round_timeout=120).round_timeout, float)
    with pytest.raises(ConfigError, match="codec = 'zstd'"):
        SimConfig.from_run_config({"codec": "zstd"})
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        SimConfig.from_run_config({"colour": "red"})


def test_overrides_are_parsed_by_the_declared_type():
    assert SimConfig.parse_override("seed", "7") == 7
    assert SimConfig.parse_override("lr", "1e-3") == pytest.approx(1e-3)
    assert SimConfig.parse_override("baselines", "false") is False
    assert SimConfig.parse_override("publish_key", "123") == "123"  # a string stays one
    assert SimConfig.parse_override("publish_key", "'/k/a b.pem'") == "/k/a b.pem"  # TOML quotes
    assert SimConfig.parse_override("publish_key", '"a b"') == "a b"
    with pytest.raises(ConfigError, match="config: rounds = 'ten' is not an integer"):
        SimConfig.parse_override("rounds", "ten")
    with pytest.raises(ConfigError, match="baselines = 'no' is not a boolean"):
        SimConfig.parse_override("baselines", "no")
    with pytest.raises(ConfigError, match="unknown key 'round'"):
        SimConfig.parse_override("round", "3")


def test_every_rule_names_a_field_and_defaults_pass_their_rules():
    names = {f.name for f in dataclasses.fields(SimConfig)}
    assert set(RULES) <= names and names >= RESUME_SAFE
    SimConfig()  # the defaults are checked on construction


def _checkpointed(folder: Path, **kw) -> SimConfig:
    cfg = SimConfig(rounds=3, out=str(folder), **kw)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    return cfg


def test_resume_applies_safe_overrides(tmp_path):
    _checkpointed(tmp_path)
    cfg = resume_config(tmp_path, rounds=6, baselines=False, evaluate_every=2)
    assert (cfg.rounds, cfg.baselines, cfg.evaluate_every, cfg.resume) == (6, False, 2, True)


@pytest.mark.parametrize(
    ("key", "value"),
    [("strategy", "fedadam"), ("seed", 1), ("method", "lora"), ("num_clients", 30)],
)
def test_resume_refuses_what_changes_the_checkpoint(tmp_path, key, value):
    _checkpointed(tmp_path)
    with pytest.raises(ConfigError, match=f"--resume cannot change {key}"):
        resume_config(tmp_path, **{key: value})


def test_resume_accepts_an_override_equal_to_the_checkpoint(tmp_path):
    _checkpointed(tmp_path, strategy="fedadam")
    assert resume_config(tmp_path, strategy="fedadam", seed=0).strategy == "fedadam"


def test_resume_checks_the_checkpoint_and_the_overrides(tmp_path):
    _checkpointed(tmp_path)
    with pytest.raises(ConfigError, match="rounds = -1 is not an integer >= 1"):
        resume_config(tmp_path, rounds=-1)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "codec": "zstd"}))
    with pytest.raises(ConfigError, match="codec = 'zstd'"):
        resume_config(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"secagg_reconstruction_threshold": 5.0},
            r"secagg_reconstruction_threshold = 5.0 .*\(0, 1\]",
        ),
        ({"secagg_num_shares": 1000.0}, r"secagg_num_shares = 1000.0 .*\(0, 1\]"),
        ({"evaluate_sample": 10**6}, "evaluate_sample = 1000000 exceeds num_clients = 20"),
        ({"publish_every": 1}, "publish_every = 1 needs publish_registry and publish_key"),
        ({"publish_every": 1, "publish_registry": "r"}, "needs publish_registry and publish_key"),
    ],
)
def test_values_once_accepted_out_of_range_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig(**overrides)


def test_a_publish_key_that_cannot_sign_stops_the_run_before_it_starts(tmp_path, capsys):
    from fedadapt.cli.app import main

    config = Path(__file__).resolve().parents[2] / "simulations" / "ci.toml"
    argv = ["simulate", "--config", str(config), "--out", str(tmp_path / "run")]
    argv += ["--set", "publish_every=1", "--set", f"publish_registry={tmp_path / 'reg'}"]
    argv += ["--set", f"publish_key={tmp_path / 'missing.pem'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fedadapt: error: no private key at {tmp_path / 'missing.pem'}"
    assert not (tmp_path / "run" / "report.json").exists()
